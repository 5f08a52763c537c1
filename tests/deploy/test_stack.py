"""Through real nginx: the rendered config, TLS, unbuffered SSE, the outer rate limit,
static files, and the request id from nginx's log to the ledger."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import httpx
import openai
import pytest

from billing.models import UsageRecord
from tests.conftest import Catalog, ledger_settled
from tests.deploy.conftest import Stack, assert_openai_error, nginx_binary, serve_model

# Every test here is transactional, so pytest-django keeps them together and the
# module's stack starts once.
pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_rendered_config_passes_nginx_t(stack: Stack) -> None:
    conf = stack.dir / "nginx" / "nginx.conf"
    assert re.search(r"\$\{TOLLWAY_[A-Z0-9_]+\}", conf.read_text()) is None, "a placeholder was left"
    result = subprocess.run(
        [str(nginx_binary()), "-t", "-p", f"{stack.dir / 'nginx'}/", "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_sdk_completion_over_verified_tls(stack: Stack, transactional_db: None, catalog: Catalog, key: Any) -> None:
    # given the official SDK, trusting only the stack's development CA
    client = stack.sdk(key.plaintext)

    # when it asks for a completion
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "Hello through nginx"}]
    )
    completion = raw.parse()

    # then it is answered, priced and recorded under the request id nginx made
    assert completion.choices[0].message.content
    request_id = raw.headers["x-request-id"]
    ledger_settled(1)  # the row and the app's log line come just after the answer is sent
    row = UsageRecord.objects.get(request_id=request_id)
    assert str(row.cost) == raw.headers["x-tollway-cost"] == completion.model_dump()["usage"]["cost"]
    logged = stack.logged(request_id)
    assert logged["status"] == 200 and logged["ssl_protocol"] == "TLSv1.3"
    assert logged["upstream_addr"] in {f"127.0.0.1:{port}" for port in stack.web_ports}
    # JSON is gzipped; the security headers come once each, from nginx
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["strict-transport-security"].startswith("max-age=")
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert raw.headers["x-frame-options"] == "DENY"
    assert raw.headers["server"] == "nginx"  # no version

    # the replica's gunicorn access log is JSON too, under the same id, and so is the
    # app's own line for the call (proxy/observe.py), with what it cost
    def replica_lines() -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for path in (stack.dir / "logs").glob("web-*.log")
            for line in path.read_text().splitlines()
            if request_id in line
        ]

    deadline = time.monotonic() + 5
    while not any(e.get("logger") == "tollway.request" for e in replica_lines()) and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = replica_lines()
    access = [e for e in lines if "method" in e]
    assert [(e["path"], e["status"]) for e in access] == [("/v1/chat/completions", 200)]
    assert access[0]["x_forwarded_for"] == "127.0.0.1"  # the client's address reaches the app
    app = [e for e in lines if e.get("logger") == "tollway.request"]
    assert len(app) == 1 and app[0]["cost_usd"] == raw.headers["x-tollway-cost"]

    # the seed article's /api/v1/ prefix reaches the same API
    legacy = stack.sdk(key.plaintext, prefix="/api/v1")
    assert {m.id for m in legacy.models.list()} == {"gpt-4.1", "deepseek-v3"}


def test_tls_1_2_is_accepted_too_and_the_certificate_is_really_checked(stack: Stack) -> None:
    import ssl

    # a client that does not trust the development CA refuses the connection
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{stack.base}/health")
    context = stack.tls()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(base_url=stack.base, verify=context) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert stack.logged(response.headers["x-request-id"])["ssl_protocol"] == "TLSv1.2"


def test_http_redirects_to_https_keeping_the_method(stack: Stack) -> None:
    response = httpx.post(f"http://127.0.0.1:{stack.http_port}/v1/chat/completions?x=1", json={})
    assert response.status_code == 308
    assert response.headers["location"] == f"{stack.base}/v1/chat/completions?x=1"


def test_first_sse_chunk_arrives_before_the_upstream_has_finished(
    stack: Stack, transactional_db: None, catalog: Catalog, key: Any, mock_server: Any
) -> None:
    # given an upstream that takes 100 ms per token, for 20 tokens
    serve_model(catalog, "slow-stream", mock_server("--chunk-delay-ms", "100"))
    client = stack.client(headers={"Authorization": f"Bearer {key.plaintext}", "Accept-Encoding": "gzip"})
    body = {"model": "slow-stream", "messages": [{"role": "user", "content": "stream"}], "stream": True}
    body["max_tokens"] = 20

    # when a client streams it through nginx
    started = time.monotonic()
    arrivals: list[tuple[float, Any]] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        headers = response.headers
        for line in response.iter_lines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                arrivals.append((time.monotonic() - started, payload if payload == "[DONE]" else json.loads(payload)))
    total = time.monotonic() - started

    # then each token arrives as the upstream makes it, not all at the end
    content = [
        t
        for t, chunk in arrivals
        if chunk != "[DONE]" and chunk["choices"] and chunk["choices"][0]["delta"].get("content")
    ]
    assert len(content) == 20
    assert total >= 1.9, "the upstream paces 20 tokens at 100 ms"
    assert content[0] < total - 1.0, f"first token at {content[0]:.2f}s of {total:.2f}s: nginx buffered the stream"
    assert content[9] < total - 0.5
    assert arrivals[-1][1] == "[DONE]"
    # SSE is never gzipped (gzip would hold chunks back), though the client accepts it
    assert headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in headers
    assert stack.logged(headers["x-request-id"])["status"] == 200


def test_bodies_over_the_apps_limit_are_refused_by_nginx(stack: Stack) -> None:
    client = stack.client()
    too_big = b"x" * (10 * 1024 * 1024 + 1)  # TOLLWAY_MAX_BODY_BYTES + 1
    response = client.post("/v1/chat/completions", content=too_big, headers={"Content-Type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")
    assert stack.logged(response.headers["x-request-id"])["upstream_addr"] == ""


def test_oversized_urls_and_headers_are_refused_by_nginx_in_json(stack: Stack) -> None:
    client = stack.client()
    long_url = client.get("/v1/models/" + "a" * 9000)
    assert_openai_error(long_url, 414, "uri_too_long")
    big_header = client.get("/v1/models", headers={"X-Big": "b" * 9000})
    assert_openai_error(big_header, 431, "request_header_fields_too_large")
    assert "<html" not in long_url.text + big_header.text


def test_admin_static_files_come_from_nginx(stack: Stack) -> None:
    client = stack.client()
    css = client.get("/static/admin/css/base.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "max-age=86400" in css.headers["cache-control"]
    assert stack.logged(css.headers["x-request-id"])["upstream_addr"] == "", "no replica served it"
    login = client.get("/admin/login/")
    assert login.status_code == 200 and "text/html" in login.headers["content-type"]
    assert stack.logged(login.headers["x-request-id"])["upstream_addr"]


def test_outer_rate_limit_answers_429_in_openai_shape(stack: Stack) -> None:
    # given nginx reloaded with a per-IP rate of 1 request a minute and a burst of 1
    reloaded = stack.run("reload", TOLLWAY_NGINX_RATE="1r/m", TOLLWAY_NGINX_BURST="1")
    assert reloaded.returncode == 0, reloaded.stderr
    try:
        client = stack.client()
        # when one address sends more than that
        responses = [client.get("/v1/models") for _ in range(4)]

        # then the excess is refused by nginx, before any replica, with a 429 the SDK understands
        statuses = [r.status_code for r in responses]
        first = statuses.index(429)
        # before the limit the app answered (401: no key); from it on, nginx refuses
        assert set(statuses[:first]) <= {401} and statuses[first:] == [429] * (4 - first), statuses
        refused = responses[-1]
        error = assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "1"
        logged = stack.logged(refused.headers["x-request-id"])
        assert logged["limit_req_status"] == "REJECTED" and logged["upstream_addr"] == ""
        with pytest.raises(openai.RateLimitError):
            stack.sdk("tlw_x").models.list()
        # health checks are never limited
        assert client.get("/health").status_code == 200
    finally:
        restored = stack.run("reload")
        assert restored.returncode == 0, restored.stderr


def test_a_replica_too_slow_for_nginx_gets_a_504_and_the_post_is_not_resent(
    stack: Stack, catalog: Catalog, key: Any, mock_server: Any
) -> None:
    # given nginx waiting at most 1 s for a completion, and an upstream taking 3 s
    serve_model(catalog, "sluggish", mock_server("--latency-ms", "3000"))
    reloaded = stack.run("reload", TOLLWAY_NGINX_STREAM_TIMEOUT="1s")
    assert reloaded.returncode == 0, reloaded.stderr
    try:
        client = stack.client(headers={"Authorization": f"Bearer {key.plaintext}"})
        response = client.post(
            "/v1/chat/completions", json={"model": "sluggish", "messages": [{"role": "user", "content": "hi"}]}
        )
        # then the client gets nginx's 504 in OpenAI's shape, and the POST went to one replica only
        assert_openai_error(response, 504, "gateway_timeout")
        logged = stack.logged(response.headers["x-request-id"])
        assert "," not in logged["upstream_addr"] and logged["upstream_status"] == "504"
        # and the call the replica finished anyway (the provider charged for it) is billed once
        deadline = time.monotonic() + 10
        while not UsageRecord.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(UsageRecord.objects.values_list("request_id", flat=True)) == [response.headers["x-request-id"]]
    finally:
        restored = stack.run("reload")
        assert restored.returncode == 0, restored.stderr


def test_celery_worker_and_beat_run(stack: Stack) -> None:
    # `up` waited for the worker to answer a ping over the broker; both are still running
    status = stack.run("status")
    assert status.returncode == 0, status.stdout
    lines = dict(line.split(None, 1) for line in status.stdout.splitlines())
    assert lines["worker"].endswith("running") and lines["beat"].endswith("running")
    assert (stack.dir / "celerybeat.pid").exists()


def test_metrics_only_for_internal_networks(stack: Stack) -> None:
    """nginx passes /metrics on for loopback (allowed) and would refuse anyone else."""
    response = stack.client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE tollway_requests_total counter" in response.text
