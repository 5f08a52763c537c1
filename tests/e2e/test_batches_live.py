"""The Batch API end to end with the official openai SDK: gunicorn, a real Celery worker on
the ``batches`` queue with a real Redis broker, files on the filesystem storage they share.
Also: a worker killed (SIGKILL) mid-batch and started again answers every line once, and
the ledger holds one row per line."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from billing.models import UsageRecord
from tenants import services
from tests.conftest import ROOT, Catalog, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live


WORKER = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "batches", "--pool", "solo"]


def _worker(env: dict[str, str]) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [*WORKER, "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )


@pytest.fixture
def batch_env(production_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **production_env,
        "TOLLWAY_FILES_DIR": str(tmp_path / "files"),
        "TOLLWAY_MOCK_LATENCY_MS": "100",
        "TOLLWAY_BATCH_TENANT_CONCURRENCY": "2",
        "TOLLWAY_BATCH_CHUNK_LINES": "4",
        "TOLLWAY_BATCH_LEASE_SECONDS": "3",
        "TOLLWAY_REQUEST_LOG": "0",
    }


@pytest.fixture
def server(batch_env: dict[str, str], catalog: Catalog) -> Iterator[str]:
    proc, base = serve({**batch_env, "WEB_CONCURRENCY": "1"})
    try:
        yield base
    finally:
        stop(proc)


@pytest.fixture
def worker(batch_env: dict[str, str]) -> Iterator[subprocess.Popen[Any]]:
    proc = _worker(batch_env)
    try:
        yield proc
    finally:
        stop(proc)


def jsonl(rows: list[Any]) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(row).encode() + b"\n" for row in rows))


def chat(custom_id: str, model: str = "gpt-4.1") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Say {custom_id}"}], "max_tokens": 20}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def wait_for(client: openai.OpenAI, batch_id: str, done: Callable[[Any], bool], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch) or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def finished(batch: Any) -> bool:
    return batch.status in ("completed", "failed", "expired", "cancelled")


def lines_of(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_sdk_chat_and_embeddings_batches(
    server: str, worker: Any, key: services.CreatedKey, sdk: Callable[..., openai.OpenAI]
) -> None:
    client = sdk(server, key.plaintext)
    uploaded = client.files.create(file=("chat.jsonl", jsonl([chat(f"r{n}") for n in range(6)])), purpose="batch")
    assert uploaded.purpose == "batch" and client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "1"}
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "1"}
    batch = wait_for(client, batch.id, finished)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == 6
    output = lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"r{n}" for n in range(6)]
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert UsageRecord.objects.filter(batch_id=batch.id).count() == 6
    assert any(b.id == batch.id for b in client.batches.list())

    vectors = [
        {"custom_id": f"v{n}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "gpt-4.1", "input": "x"}}
        for n in range(3)
    ]
    file = client.files.create(file=("emb.jsonl", jsonl(vectors)), purpose="batch")
    embedded = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    embedded = wait_for(client, embedded.id, finished)
    assert embedded.status == "completed"
    assert all(line["response"]["body"]["data"][0]["embedding"] for line in lines_of(client, embedded.output_file_id))
    assert client.files.delete(file.id).deleted


def test_sdk_bad_lines_fail_with_line_numbers_and_cancel_mid_way(
    server: str,
    worker: Any,
    key: services.CreatedKey,
    other_tenant: Any,
    make_key: Any,
    sdk: Callable[..., openai.OpenAI],
) -> None:
    client = sdk(server, key.plaintext)
    bad = client.files.create(
        file=("bad.jsonl", jsonl([chat("a"), {"custom_id": "a"}, chat("c", model="nope")])), purpose="batch"
    )
    failed = wait_for(
        client,
        client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h").id,
        finished,
    )
    assert failed.status == "failed"
    assert [(e.line, e.code) for e in failed.errors.data] == [(2, "invalid_method"), (3, "model_not_found")]

    many = client.files.create(file=("many.jsonl", jsonl([chat(f"m{n}") for n in range(40)])), purpose="batch")
    batch = client.batches.create(input_file_id=many.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2)
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    batch = wait_for(client, batch.id, finished)
    assert batch.status == "cancelled"
    answered = lines_of(client, batch.output_file_id)
    assert 2 <= len(answered) < 40 and len(answered) == batch.request_counts.completed
    assert UsageRecord.objects.filter(batch_id=batch.id).count() == len(answered)

    # Another tenant's ids answer 404, through the SDK's own error.
    stranger = sdk(server, make_key(other_tenant).plaintext)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.content(many.id)
    with pytest.raises(openai.BadRequestError) as too_big:
        client.files.create(file=("x.jsonl", io.BytesIO(b"")), purpose="batch")
    assert too_big.value.status_code == 400


def test_a_worker_killed_mid_batch_restarts_and_answers_every_line_once(
    server: str, batch_env: dict[str, str], key: services.CreatedKey, sdk: Callable[..., openai.OpenAI]
) -> None:
    client = sdk(server, key.plaintext)
    count = 30
    file = client.files.create(file=("k.jsonl", jsonl([chat(f"k{n}") for n in range(count)])), purpose="batch")
    first = _worker(batch_env)
    try:
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 5)
        os.kill(first.pid, signal.SIGKILL)  # mid-batch: lines in flight, the lease held
        first.wait()
        assert client.batches.retrieve(batch.id).status == "in_progress"
    finally:
        stop(first)
    second = _worker(batch_env)  # resumes it at start, once the dead worker's lease lapses
    try:
        batch = wait_for(client, batch.id, finished, timeout=180)
    finally:
        stop(second)
    assert batch.status == "completed", batch
    output = lines_of(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"k{n}" for n in range(count))
    rows = list(UsageRecord.objects.filter(batch_id=batch.id).values_list("request_id", flat=True))
    assert len(rows) == count and sorted(rows) == sorted(line["id"] for line in output)
