"""Files for the Batch API, kept through Django's storage API (the ``batch_files`` storage:
the local filesystem under ``var/files`` by default, S3-compatible object storage through
django-storages when ``TOLLWAY_FILES_STORAGE=s3``). The database row is the index; the
bytes live in the storage, under the tenant's id."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

from django.conf import settings
from django.core.files import File as DjangoFile
from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import UploadedFile

from batches.models import File
from config.errors import ErrorCode, InvalidRequest

PURPOSES = ("batch",)  # what a tenant may upload; batch_output files are Tollway's own


def storage() -> Storage:
    return storages["batch_files"]


def _limits() -> tuple[int, int]:
    conf = settings.TOLLWAY
    return int(conf["BATCH_MAX_FILE_BYTES"]), int(conf["BATCH_MAX_REQUESTS"])


def too_large(size: int) -> InvalidRequest:
    limit, _ = _limits()
    return InvalidRequest(
        f"The file is {size} bytes; a batch input file may be at most {limit} bytes ({limit // (1024 * 1024)} MB). "
        "Split it into several batches.",
        param="file",
        code=ErrorCode.BODY_TOO_LARGE,
    )


def _count_requests(upload: UploadedFile) -> int:
    """Non-blank lines, refused above the limit before the file is stored."""
    _, most = _limits()
    count = 0
    for raw in upload:
        if raw.strip():
            count += 1
            if count > most:
                raise InvalidRequest(
                    f"The file holds more than {most} requests, the most one batch may hold. "
                    "Split it into several batches.",
                    param="file",
                )
    upload.seek(0)
    return count


def file_create(*, tenant_id: int, upload: UploadedFile, purpose: str) -> File:
    """Store an uploaded batch input file for the tenant: at most ``BATCH_MAX_FILE_BYTES``
    and ``BATCH_MAX_REQUESTS`` lines (OpenAI's 200 MB and 50,000), else a 400 naming the
    limit. Its lines are checked when a batch uses it (``batches.validate``)."""
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"'purpose' must be one of: {', '.join(PURPOSES)} (Tollway stores files for the Batch API only).",
            param="purpose",
        )
    limit, _ = _limits()
    if upload.size is None or upload.size > limit:
        raise too_large(upload.size or 0)
    if upload.size == 0:
        raise InvalidRequest("The file is empty: upload a JSONL file with one request per line.", param="file")
    requests = _count_requests(upload)
    row = File(tenant_id=tenant_id, purpose=purpose, filename=(upload.name or "upload.jsonl")[:255], bytes=upload.size)
    row.storage_name = storage().save(f"{tenant_id}/{row.public_id}.jsonl", upload)
    row.requests = requests
    row.save()
    return row


def file_write(*, tenant_id: int, filename: str, lines: Iterable[bytes]) -> File:
    """Write a batch's output or error file from ``lines`` (each ending in a newline),
    spooled to a temporary file first so a 50,000-line answer is never all in memory."""
    with tempfile.TemporaryFile() as spool:
        for line in lines:
            spool.write(line)
        size = spool.tell()
        spool.seek(0)
        row = File(tenant_id=tenant_id, purpose=File.Purpose.BATCH_OUTPUT, filename=filename, bytes=size)
        row.storage_name = storage().save(f"{tenant_id}/{row.public_id}.jsonl", DjangoFile(spool))
    row.save()
    return row


def file_open(file: File) -> IO[bytes]:
    return storage().open(file.storage_name, "rb")


def file_lines(file: File) -> Iterator[bytes]:
    with file_open(file) as handle:
        yield from handle


def file_delete(*, file: File) -> None:
    """Delete the row, then the bytes (a failure to delete the bytes leaves an orphan,
    never a row pointing at nothing)."""
    name = file.storage_name
    file.delete()
    storage().delete(name)
