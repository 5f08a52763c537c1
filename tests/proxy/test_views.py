"""The endpoints' order of stages and their error answers: the key before the body, JSON
errors on every API path (the root without its slash, unknown paths, DEBUG on), and a bug
answered 500 ``internal_error`` with the request id, never as the provider's failure."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.test import Client

from proxy import route
from tests.config.test_wsgi import _keep_test_connection, call  # noqa: F401  # the fixture is autouse
from tests.conftest import Api, Catalog, user
from tests.proxy.test_errors import assert_openai_error

pytestmark = pytest.mark.django_db

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/v1/chat/completions"]


class TestTheKeyComesFirst:
    @pytest.mark.parametrize("path", ENDPOINTS)
    @pytest.mark.parametrize(
        "body", [b'{"model": ', b"[1, 2]", b'{"model": "gpt-4.1", "messages": "no"}', b"\xff\xfe", b""]
    )
    @pytest.mark.parametrize("authorization", [None, "Bearer tlw_not_a_key", "Basic abc"])
    def test_without_a_valid_key_any_body_gets_401(
        self, client: Client, catalog: Catalog, path: str, body: bytes, authorization: str | None
    ) -> None:
        headers = {"Authorization": authorization} if authorization else {}
        response = client.post(path, data=body, content_type="application/json", headers=headers)
        assert_openai_error(response, 401, "invalid_api_key")

    def test_an_oversized_body_without_a_key_is_401_not_413(self, client: Client, settings: Any) -> None:
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
        big = json.dumps({"model": "gpt-4.1", "messages": user("x" * 5000)})
        response = client.post("/v1/chat/completions", data=big, content_type="application/json")
        assert_openai_error(response, 401, "invalid_api_key")

    def test_the_body_of_a_keyless_call_is_never_read(self, db: None) -> None:
        # Given a body that records how much of it was read
        class Recording(io.BytesIO):
            taken = 0

            def read(self, size: int | None = -1) -> bytes:
                data = super().read(size)
                Recording.taken += len(data)
                return data

        body = json.dumps({"model": "gpt-4.1", "messages": user("x" * 100_000)}).encode()
        environ_input = Recording(body)
        # When it is sent with a wrong key, through the WSGI entry point gunicorn calls
        status, _, content = call(
            "POST", "/v1/chat/completions", {"Authorization": "Bearer tlw_wrong"}, wsgi_input=environ_input
        )
        # Then it is refused, and not a byte of the body was read
        assert status == 401, content
        assert Recording.taken == 0

    def test_with_a_valid_key_bad_bodies_are_400(self, api: Api, catalog: Catalog) -> None:
        assert_openai_error(api.chat(None, raw=b'{"model": '), 400, "invalid_json")


class TestJsonErrorsOnApiPaths:
    @pytest.mark.parametrize("path", ["/v1", "/api/v1", "/v1/", "/v1/nope", "/api/v1/chat/completions/x", "/v1/\n"])
    @pytest.mark.parametrize("debug", [False, True])
    def test_unknown_api_paths_are_openai_json_404s(
        self, client: Client, settings: Any, path: str, debug: bool
    ) -> None:
        settings.DEBUG = debug
        error = assert_openai_error(client.get(path), 404, "not_found")
        assert "urlpatterns" not in error["message"] and "URLconf" not in error["message"]

    def test_pages_keep_djangos_404(self, client: Client) -> None:
        response = client.get("/nope/")
        assert response.status_code == 404
        assert "application/json" not in response["Content-Type"]

    @pytest.mark.parametrize("debug", [False, True])
    def test_a_bug_on_the_request_path_is_500_internal_error(
        self, api: Api, catalog: Catalog, settings: Any, monkeypatch: pytest.MonkeyPatch, debug: bool
    ) -> None:
        settings.DEBUG = debug

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(route, "plan", broken)
        response = api.chat({"model": "gpt-4.1", "messages": user("hi")})
        error = assert_openai_error(response, 500, "internal_error")
        assert error["type"] == "server_error"
        assert response["X-Request-ID"] in error["message"]
        assert "a bug" not in error["message"]

    @pytest.mark.parametrize("debug", [False, True])
    def test_a_bug_in_the_management_api_is_500_internal_error(
        self,
        client: Client,
        tenant: Any,
        make_key: Any,
        settings: Any,
        monkeypatch: pytest.MonkeyPatch,
        debug: bool,
    ) -> None:
        settings.DEBUG = debug
        from billing import api as billing_api

        def broken(**kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(billing_api, "usage_report", broken)
        key = make_key(tenant, "b", scopes=["billing"])
        response = client.get("/v1/usage", headers={"Authorization": f"Bearer {key.plaintext}"})
        error = assert_openai_error(response, 500, "internal_error")
        assert response["X-Request-ID"] in error["message"]


class TestDatabaseAway:
    """A request that needs the database for itself while it is away: 503, never 500."""

    def test_a_key_not_cached_yet(self, api: Api, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
        from django.db import OperationalError

        from tenants.cache import principals

        def away(key_id: str) -> Any:
            raise OperationalError("connection to server failed: Connection refused")

        monkeypatch.setattr(principals, "loader", away)
        response = api.chat({"model": "gpt-4.1", "messages": user("hi")})
        error = assert_openai_error(response, 503, "service_unavailable")
        assert error["type"] == "server_error"
        assert response["Retry-After"] == "1"

    def test_the_management_api(
        self, client: Client, tenant: Any, make_key: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from django.db import InterfaceError

        from billing import api as billing_api

        def away(**kwargs: Any) -> Any:
            raise InterfaceError("connection already closed")

        monkeypatch.setattr(billing_api, "usage_report", away)
        key = make_key(tenant, "b", scopes=["billing"])
        response = client.get("/v1/usage", headers={"Authorization": f"Bearer {key.plaintext}"})
        assert_openai_error(response, 503, "service_unavailable")
