"""The graceful stop with real gunicorn (production profile): SIGTERM while a stream is in
flight. Readiness turns 503 at once, new calls are refused and then not accepted at all,
and the stream finishes whole and is billed once (config/lifecycle.py, config/gunicorn.py).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.models import UsageRecord
from proxy import mockgen, tokens
from tenants import services
from tests.conftest import Catalog, ledger_settled, stop
from tests.e2e.conftest import serve
from tests.procs import children

pytestmark = pytest.mark.live

CHUNK_DELAY_MS = 400
DRAIN_SECONDS = 6
MESSAGES = [{"role": "user", "content": "drain me slowly"}]


class Stream(threading.Thread):
    """A streamed completion read in the background, event by event."""

    def __init__(self, base: str, key: str) -> None:
        super().__init__(daemon=True)
        self.base, self.key = base, key
        self.status: int | None = None
        self.events: list[Any] = []
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"model": "gpt-4.1", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        headers = {"Authorization": f"Bearer {self.key}"}
        try:
            with httpx.stream("POST", f"{self.base}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line[len("data: ") :]
                        self.events.append(data if data == "[DONE]" else json.loads(data))
                        if self.text():
                            self.started.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()

    def text(self) -> str:
        return "".join(
            e["choices"][0]["delta"].get("content") or "" for e in self.events if e != "[DONE]" and e["choices"]
        )


def get(url: str) -> httpx.Response:
    """A request on a connection of its own, as a probe or a new client makes it."""
    return httpx.get(url, timeout=5)


def test_sigterm_finishes_the_stream_in_flight_bills_it_and_takes_no_new_calls(
    production_env: dict[str, str], catalog: Catalog, key: services.CreatedKey
) -> None:
    expected_text, _ = mockgen.reply(MESSAGES, max_tokens=None)
    assert len(tokens.pieces(expected_text)) * CHUNK_DELAY_MS / 1000 > DRAIN_SECONDS + 2  # outlives the drain
    env = {
        **production_env,
        "TOLLWAY_MOCK_CHUNK_DELAY_MS": str(CHUNK_DELAY_MS),
        "GUNICORN_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "GUNICORN_GRACEFUL_TIMEOUT": "60",
    }
    proc, base = serve(env)  # two workers: the master must pass SIGTERM to each
    try:
        assert get(f"{base}/ready").status_code == 200
        # Given a slow stream in flight
        stream = Stream(base, key.plaintext)
        stream.start()
        assert stream.started.wait(20) and stream.error is None and stream.status == 200

        # When the replica is told to stop, as kubelet does after the preStop hook
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()

        # Then readiness turns 503 at once (each probe on a new connection)
        while (ready := get(f"{base}/ready")).status_code == 200:
            assert time.monotonic() - sent < 3, "/ready still answers 200 three seconds after SIGTERM"
            time.sleep(0.05)
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        # liveness still holds: an orchestrator must not kill it while streams finish
        assert get(f"{base}/health").status_code == 200

        # and a new call is refused, retryably, before it reaches any upstream
        refused = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "too late"}]},
            headers={"Authorization": f"Bearer {key.plaintext}"},
            timeout=5,
        )
        assert time.monotonic() - sent < DRAIN_SECONDS, "the machine was too slow to see the drain window"
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_draining"
        assert refused.headers["x-should-retry"] == "true"

        # after the drain the listener closes: new connections are not accepted at all.
        # One the kernel queued just before the close is reset, never answered.
        while True:
            try:
                get(f"{base}/health")
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                break
            assert time.monotonic() - sent < DRAIN_SECONDS + 5, "still accepting connections after the drain"
            time.sleep(0.1)
        assert stream.is_alive(), "the stream ended before the listener closed; it proves nothing"

        # And the stream in flight finishes, whole
        stream.join(timeout=60)
        assert stream.error is None, stream.error
        assert stream.events[-1] == "[DONE]"
        assert stream.text() == expected_text
        usage = stream.events[-2]["usage"]
        # gunicorn exits cleanly once its last call is done, well inside graceful_timeout
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)

    # the stream was billed once, from the provider's count; the refused call not at all
    ledger_settled(1)
    rows = list(UsageRecord.objects.all())
    assert len(rows) == 1
    row = rows[0]
    assert (row.outcome, row.usage_estimated) == ("completed", False)
    assert (row.input_tokens, row.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert str(row.cost) == usage["cost"]


def test_an_idle_kept_alive_connection_does_not_hold_the_stop(production_env: dict[str, str]) -> None:
    proc, base = serve(production_env)  # gunicorn's keepalive: 75 s
    try:
        # Given a client whose call is done and whose connection stays open, idle (an SDK's pool)
        client = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=5)
        client.request("GET", "/health")
        answer = client.getresponse()
        assert (answer.status, answer.read()) == (200, b'{"status": "ok"}')
        assert client.sock is not None

        # When the replica is told to stop
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()

        # Then it exits at once, not when the idle connection's keepalive runs out
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - sent < 5
        # and the connection was closed without a byte: no error page, nothing half-written
        assert client.sock.recv(1) == b""
        client.close()
    finally:
        stop(proc)


def test_a_worker_recycled_by_max_requests_leaves_at_once_despite_an_idle_connection(
    production_env: dict[str, str],
) -> None:
    env = {**production_env, "WEB_CONCURRENCY": "1", "GUNICORN_MAX_REQUESTS": "4", "GUNICORN_MAX_REQUESTS_JITTER": "0"}
    proc, base = serve(env)
    try:
        (worker,) = children(proc.pid)
        # Given a client holding an idle kept-alive connection to the only worker
        idle = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=5)
        idle.request("GET", "/health")
        assert idle.getresponse().read() == b'{"status": "ok"}'
        # When the worker reaches max_requests (gunicorn closes that call's connection)
        for _ in range(4):
            if get(f"{base}/health").headers.get("connection") == "close":
                break
        else:
            pytest.fail("the worker never reached max_requests")

        # Then it closes the idle connection without a byte and exits, not after keepalive (75 s)
        assert idle.sock is not None and idle.sock.recv(1) == b""
        idle.close()
        deadline = time.monotonic() + 10
        while worker in children(proc.pid):
            assert time.monotonic() < deadline, "the recycled worker is still running"
            time.sleep(0.1)
        # and its replacement answers
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    finally:
        stop(proc)


def test_access_log_lines_wait_for_their_batch_and_all_are_written_at_the_stop(
    production_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**production_env, "WEB_CONCURRENCY": "1", "GUNICORN_ACCESSLOG": "-", "TOLLWAY_LOG_FLUSH_SECONDS": "30"}
    stdout = tmp_path / "stdout.log"

    def access_lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stdout.read_text().splitlines() if '"method"' in line]

    with stdout.open("w") as out:
        proc, base = serve(env, stdout=out)
        try:
            # Given three calls, each with its line in gunicorn's JSON access log
            ids = [httpx.get(f"{base}/health", timeout=10).headers["x-request-id"] for _ in range(3)]
            # Then the lines wait to share a write, not one write per call
            time.sleep(0.5)
            assert access_lines() == []
            # and when the replica stops, every held line is written
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            stop(proc)
    lines = {line["request_id"]: line for line in access_lines()}
    assert all(lines[request_id]["path"] == "/health" and lines[request_id]["status"] == 200 for request_id in ids)
