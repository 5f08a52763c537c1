"""The WSGI entry point gunicorn serves: keyed API calls take the short middleware chain,
everything else the full one."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from billing.models import UsageRecord
from config import lifecycle
from config.wsgi import application
from tenants import services
from tests.conftest import Catalog


@pytest.fixture(autouse=True)
def _keep_test_connection() -> Iterator[None]:
    # As Django's test client does: the test's transaction must outlive each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def call(
    method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else b""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    status: list[str] = []
    response_headers: dict[str, str] = {}

    def start_response(line: str, pairs: list[tuple[str, str]], exc_info: Any = None) -> None:
        status.append(line)
        response_headers.update((k.lower(), v) for k, v in pairs)

    result = application(environ, start_response)
    try:
        content = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return int(status[0].split()[0]), response_headers, content


def test_a_keyed_completion_is_answered_billed_and_framed_as_before(catalog: Catalog, key: services.CreatedKey) -> None:
    status, headers, content = call(
        "POST",
        "/v1/chat/completions",
        {"Authorization": f"Bearer {key.plaintext}"},
        {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 200, content
    body = json.loads(content)
    assert body["object"] == "chat.completion"
    assert headers["x-tollway-cost"] == body["usage"]["cost"]
    assert len(headers["x-request-id"]) == 32
    assert headers["content-length"] == str(len(content))
    assert headers["x-content-type-options"] == "nosniff"
    # The short chain: no session, CSRF or framing layer, nothing that varies on a cookie.
    assert "x-frame-options" not in headers
    assert "set-cookie" not in headers
    assert "cookie" not in headers.get("vary", "").lower()


def test_a_bad_key_gets_the_openai_error_on_the_short_chain(db: None) -> None:
    status, headers, content = call("GET", "/api/v1/models", {"Authorization": "Bearer tlw_nope"})
    assert status == 401
    assert json.loads(content)["error"]["code"] == "invalid_api_key"
    assert headers["x-request-id"]


def test_pages_and_cookie_calls_keep_the_full_chain(db: None) -> None:
    status, headers, _ = call("GET", "/accounts/login/")
    assert status == 200
    assert headers["x-frame-options"] == "DENY"
    assert "csrftoken" in headers.get("set-cookie", "")
    # The playground's calls carry the login cookie and no key: the session layer reads it.
    status, headers, content = call("GET", "/v1/models", {"Cookie": "sessionid=stale"})
    assert status == 401
    assert "not logged in" in json.loads(content)["error"]["message"]
    assert headers["x-frame-options"] == "DENY"


def test_a_draining_worker_refuses_new_calls_and_says_so_on_ready(
    catalog: Catalog, key: services.CreatedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker that has received SIGTERM (config/lifecycle.py)
    monkeypatch.setattr(lifecycle, "_draining", True)
    chat = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {key.plaintext}"}
    # then a new call, with or without a key, on either prefix, is refused as retryable
    for path, headers in (("/v1/chat/completions", auth), ("/api/v1/chat/completions", auth), ("/v1/models", {})):
        status, response_headers, content = call("POST", path, headers, chat)
        assert status == 503, content
        assert json.loads(content) == {
            "error": {"message": json.loads(content)["error"]["message"], "type": "server_error", "param": None,
                      "code": "server_draining"}
        }  # fmt: skip
        assert response_headers["x-should-retry"] == "true"
        assert response_headers["retry-after"] == "1"
        assert response_headers["content-length"] == str(len(content))
    # readiness says so, liveness does not (the orchestrator must not kill it mid-stream)
    status, _, content = call("GET", "/ready")
    assert (status, json.loads(content)) == (503, {"status": "draining"})
    assert call("GET", "/health")[0] == 200
    # and nothing was billed
    assert not UsageRecord.objects.exists()
