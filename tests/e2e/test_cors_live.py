"""CORS for browser clients, against gunicorn as production runs it: off by default; with
``TOLLWAY_CORS_ALLOWED_ORIGINS`` the preflight is answered for the listed origins (with the
headers the openai SDKs send), keyed calls carry the CORS headers, and a page in real
headless Chromium on an allowed origin can call the API while one elsewhere cannot."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tenants import services
from tests.browser import needs_chromium
from tests.conftest import Catalog, free_port, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live

SDK_HEADERS = "authorization,content-type,x-stainless-os,x-stainless-lang,x-stainless-retry-count"


@pytest.fixture
def page_origin() -> Iterator[str]:
    """An empty page on another origin (another port), as a browser app would be."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>app</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def gateway(production_env: dict[str, str], catalog: Catalog, page_origin: str) -> Iterator[str]:
    proc, base = serve({**production_env, "TOLLWAY_CORS_ALLOWED_ORIGINS": page_origin})
    try:
        yield base
    finally:
        stop(proc)


def preflight(base: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{base}/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": SDK_HEADERS,
        },
    )


def test_cors_is_off_by_default(production_env: dict[str, str], catalog: Catalog) -> None:
    proc, base = serve(production_env)
    try:
        response = preflight(base, "http://127.0.0.1:1")
        assert "access-control-allow-origin" not in response.headers
    finally:
        stop(proc)


def test_allowed_origins_get_the_preflight_and_the_headers(
    gateway: str, page_origin: str, key: services.CreatedKey
) -> None:
    response = preflight(gateway, page_origin)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == page_origin
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert set(SDK_HEADERS.split(",")) <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    # the keyed call itself (the short middleware chain) carries them too
    answer = httpx.post(
        f"{gateway}/v1/chat/completions",
        headers={"Origin": page_origin, "Authorization": f"Bearer {key.plaintext}"},
        json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == page_origin
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    # an origin not listed gets nothing a browser would accept
    assert "access-control-allow-origin" not in preflight(gateway, "http://evil.test").headers
    # and only the API answers CORS, not the pages
    assert "access-control-allow-origin" not in httpx.get(f"{gateway}/health", headers={"Origin": page_origin}).headers


@needs_chromium
def test_a_page_on_an_allowed_origin_calls_the_api_from_chromium(
    gateway: str, page_origin: str, key: services.CreatedKey, browser: Any
) -> None:
    script = """async ([base, key, stream]) => {
        const response = await fetch(base + "/v1/chat/completions", {
            method: "POST",
            headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json",
                      "X-Stainless-OS": "Linux"},
            body: JSON.stringify({model: "gpt-4.1", stream, messages: [{role: "user", content: "hi"}]}),
        });
        return [response.status, await response.text(), response.headers.get("x-request-id")];
    }"""
    page = browser.new_page()
    try:
        page.goto(page_origin)
        status, text, request_id = page.evaluate(script, [gateway, key.plaintext, False])
        assert status == 200 and "chat.completion" in text and request_id
        status, text, _ = page.evaluate(script, [gateway, key.plaintext, True])
        assert status == 200 and text.rstrip().endswith("data: [DONE]")
        # the same page served from another origin is stopped by the browser
        other = browser.new_page()
        try:
            other.goto(page_origin.replace("127.0.0.1", "localhost"))
            with pytest.raises(Exception, match="Failed to fetch"):
                other.evaluate(script, [gateway, key.plaintext, False])
        finally:
            other.close()
    finally:
        page.close()
