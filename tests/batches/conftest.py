"""Fixtures for the Batch API: files in a temporary storage, and batches run in-process."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from config.celery import app
from tenants import services


@pytest.fixture(autouse=True)
def _committed(transactional_db: None) -> None:
    """Batch lines run on worker threads with their own database connections, which see
    only committed rows: these tests commit, as the servers' tests do."""


@pytest.fixture(autouse=True)
def batch_storage(settings: Any, tmp_path: Path) -> Path:
    """Each test's files in its own folder: the filesystem storage, as `make run` has it."""
    folder = tmp_path / "files"
    settings.STORAGES = {
        **settings.STORAGES,
        "batch_files": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(folder)},
        },
    }
    return folder


@pytest.fixture
def eager() -> Iterator[None]:
    """Batches run inside the request that creates (or cancels) them, as with no worker."""
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def chat_line(custom_id: str, content: str = "Hello", model: str = "gpt-4.1", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 20, **body},
    }


class BatchApi:
    """The Django test client on the Batch API with one tenant's key."""

    def __init__(self, client: Client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def upload(self, content: bytes, *, purpose: str = "batch", name: str = "input.jsonl") -> Any:
        return self.client.post(
            "/v1/files",
            {"purpose": purpose, "file": SimpleUploadedFile(name, content, "application/jsonl")},
            headers=self.headers,
        )

    def create(self, file_id: str, endpoint: str = "/v1/chat/completions", **extra: Any) -> Any:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
        return self.client.post("/v1/batches", json.dumps(body), content_type="application/json", headers=self.headers)

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)

    def post(self, path: str) -> Any:
        return self.client.post(path, headers=self.headers)

    def delete(self, path: str) -> Any:
        return self.client.delete(path, headers=self.headers)

    def content(self, file_id: str) -> list[dict[str, Any]]:
        response = self.get(f"/v1/files/{file_id}/content")
        assert response.status_code == 200
        return [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]


@pytest.fixture
def batch_api(client: Client, key: services.CreatedKey) -> BatchApi:
    return BatchApi(client, key.plaintext)


@pytest.fixture
def other_api(client: Client, other_tenant: Any, make_key: Callable[..., services.CreatedKey]) -> BatchApi:
    return BatchApi(client, make_key(other_tenant).plaintext)


@pytest.fixture
def run_on_commit(django_capture_on_commit_callbacks: Any) -> Iterator[Any]:
    yield django_capture_on_commit_callbacks
