"""An https upstream behind a private CA, called from production's gunicorn gevent worker:
the handshake under gevent, the CA in TOLLWAY_UPSTREAM_CA_BUNDLE trusted, a chunked
stream read over TLS to its end and billed, and its connection kept for the next call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from billing.models import UsageRecord
from tenants import services
from tests.conftest import Catalog, Upstream, stop, user
from tests.e2e.conftest import serve
from tests.proxy.test_sse import CHUNK, frame
from tests.proxy.test_upstream_pool import self_signed
from tests.rawhttp import RawServer

pytestmark = pytest.mark.live

EVENTS = [
    {**CHUNK, "choices": [{"index": 0, "delta": {"content": "sealed"}, "finish_reason": "stop"}]},
    {**CHUNK, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
]
SSE = frame([*(json.dumps(e) for e in EVENTS), "[DONE]"], b"\n")
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_private_ca_https_upstream_streams_under_gevent_on_one_kept_connection(
    production_env: dict[str, str], catalog: Catalog, key: services.CreatedKey, tmp_path: Path
) -> None:
    server_tls, _ = self_signed(tmp_path)
    # Chunked, and kept open after each answer: the next call may reuse the connection.
    server = RawServer(tls=server_tls, pieces=[HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SSE), SSE)])
    upstream = Upstream(base_url=f"https://127.0.0.1:{server.port}/v1", port=server.port)
    catalog.add_http_model("private", upstream, "up")
    env = {**production_env, "WEB_CONCURRENCY": "1", "TOLLWAY_UPSTREAM_CA_BUNDLE": str(tmp_path / "cert.pem")}
    proc, base = serve(env)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key.plaintext}"}, timeout=30) as client:
            for _ in range(3):
                body = {"model": "private", "messages": user("hi"), "stream": True}
                response = client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                assert '"sealed"' in response.text and response.text.rstrip().endswith("data: [DONE]")
    finally:
        stop(proc)
    assert server.accepted == 1, "each stream ended cleanly over TLS, so the next call reused its connection"
    deadline = time.monotonic() + 5
    while UsageRecord.objects.filter(output_tokens=1).count() < 3:
        assert time.monotonic() < deadline, "a stream went unbilled"
        time.sleep(0.05)
