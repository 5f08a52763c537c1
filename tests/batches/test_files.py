"""/v1/files: upload, list, retrieve, content, delete; the limits; tenant scoping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batches.models import File
from tests.batches.conftest import BatchApi, chat_line, jsonl


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def test_upload_list_read_and_delete_a_file(batch_api: BatchApi, batch_storage: Path) -> None:
    content = jsonl([chat_line("a"), chat_line("b")])
    uploaded = batch_api.upload(content, name="evals.jsonl")
    assert uploaded.status_code == 200, uploaded.content
    file = uploaded.json()
    assert file["object"] == "file" and file["purpose"] == "batch" and file["filename"] == "evals.jsonl"
    assert file["bytes"] == len(content) and file["id"].startswith("file-")
    # Stored through the storage API, under the tenant.
    assert [p.read_bytes() for p in batch_storage.rglob("*.jsonl")] == [content]

    assert batch_api.get(f"/v1/files/{file['id']}").json() == file
    assert [f["id"] for f in batch_api.get("/v1/files").json()["data"]] == [file["id"]]
    body = batch_api.get(f"/v1/files/{file['id']}/content")
    assert b"".join(body.streaming_content) == content

    deleted = batch_api.delete(f"/v1/files/{file['id']}")
    assert deleted.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert not list(batch_storage.rglob("*.jsonl"))
    _error(batch_api.get(f"/v1/files/{file['id']}"), 404)


def test_files_list_pages_newest_first(batch_api: BatchApi) -> None:
    ids = [batch_api.upload(jsonl([chat_line(str(n))])).json()["id"] for n in range(3)]
    first = batch_api.get("/v1/files?limit=2").json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = batch_api.get(f"/v1/files?limit=2&after={first['last_id']}").json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    assert _error(batch_api.get("/v1/files?limit=1000"), 400)["param"] == "limit"


def test_another_tenants_file_answers_404(batch_api: BatchApi, other_api: BatchApi) -> None:
    file_id = batch_api.upload(jsonl([chat_line("a")])).json()["id"]
    for response in (
        other_api.get(f"/v1/files/{file_id}"),
        other_api.get(f"/v1/files/{file_id}/content"),
        other_api.delete(f"/v1/files/{file_id}"),
        other_api.create(file_id),
    ):
        assert "No such File object" in _error(response, 404)["message"]
    assert other_api.get("/v1/files").json()["data"] == []
    assert File.objects.filter(public_id=file_id).exists()  # the delete did nothing


def test_limits_and_bad_uploads_are_400s_that_store_nothing(
    batch_api: BatchApi, settings: Any, batch_storage: Path
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "BATCH_MAX_FILE_BYTES": 1000, "BATCH_MAX_REQUESTS": 2}
    big = _error(batch_api.upload(b"x" * 1001), 400)
    assert "at most 1000 bytes" in big["message"] and big["param"] == "file"
    many = _error(batch_api.upload(jsonl([chat_line("a", "x"), chat_line("b", "y"), chat_line("c", "z")])), 400)
    assert "more than 2 requests" in many["message"]
    assert "'purpose'" in _error(batch_api.upload(b"{}\n", purpose="fine-tune"), 400)["message"]
    assert "empty" in _error(batch_api.upload(b""), 400)["message"]
    missing = batch_api.client.post("/v1/files", {"purpose": "batch"}, headers=batch_api.headers)
    assert _error(missing, 400)["param"] == "file"
    not_multipart = batch_api.client.post(
        "/v1/files", b"{}", content_type="application/json", headers=batch_api.headers
    )
    assert "multipart/form-data" in _error(not_multipart, 400)["message"]
    assert File.objects.count() == 0 and not list(batch_storage.rglob("*"))


@pytest.mark.parametrize("path", ["/v1/files", "/v1/batches"])
def test_without_a_key_is_401(client: Any, path: str) -> None:
    assert _error(client.get(path), 401)["code"] == "invalid_api_key"
