"""Bad input and failing upstreams: OpenAI-shaped errors, the right status, nothing billed."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from billing.models import UsageRecord
from tenants import services
from tenants.models import Tenant
from tests.conftest import UPSTREAM_KEY, Api, Catalog, Upstream, free_port, user

pytestmark = pytest.mark.django_db


def assert_openai_error(
    response: Any, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in error["message"]
    return error


@pytest.fixture
def nothing_billed(db: None) -> Any:
    yield
    # A rejected request writes nothing to the ledger.
    assert not UsageRecord.objects.exists()


@pytest.mark.usefixtures("nothing_billed")
class TestBadInput:
    def test_malformed_json(self, api: Api, catalog: Catalog) -> None:
        assert_openai_error(api.chat(None, raw=b'{"model": "gpt-4.1", '), 400, "invalid_json")

    def test_body_not_an_object(self, api: Api, catalog: Catalog) -> None:
        assert_openai_error(api.chat(["model"]), 400, "invalid_json")

    def test_missing_model(self, api: Api, catalog: Catalog) -> None:
        assert_openai_error(api.chat({"messages": user("hi")}), 400, "missing_required_parameter", "model")

    def test_missing_messages(self, api: Api, catalog: Catalog) -> None:
        assert_openai_error(api.chat({"model": "gpt-4.1"}), 400, "missing_required_parameter", "messages")

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"model": "gpt-4.1", "messages": []}, "messages"),
            ({"model": "gpt-4.1", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
            ({"model": "gpt-4.1", "messages": user("x"), "stream": "yes"}, "stream"),
            ({"model": "gpt-4.1", "messages": user("x"), "max_tokens": -5}, "max_tokens"),
            ({"model": 7, "messages": user("x")}, "model"),
        ],
    )
    def test_invalid_parameters(self, api: Api, catalog: Catalog, body: dict[str, Any], param: str) -> None:
        assert_openai_error(api.chat(body), 400, param=param)

    def test_unknown_model(self, api: Api, catalog: Catalog) -> None:
        error = assert_openai_error(
            api.chat({"model": "gpt-9", "messages": user("hi")}), 404, "model_not_found", "model"
        )
        assert "gpt-9" in error["message"]

    def test_model_without_price_is_not_served(self, api: Api, catalog: Catalog) -> None:
        catalog.models["gpt-4.1"].prices.all().delete()
        assert_openai_error(api.chat({"model": "gpt-4.1", "messages": user("hi")}), 404, "model_not_found")

    def test_wrong_method(self, api: Api, catalog: Catalog) -> None:
        response = api.get("/v1/chat/completions")
        assert_openai_error(response, 405, "method_not_allowed")
        assert response["Allow"] == "POST"

    def test_unknown_endpoint_is_json_404(self, api: Api) -> None:
        assert_openai_error(api.get("/v1/no-such-thing"), 404, "not_found")

    def test_body_too_large(self, api: Api, catalog: Catalog, settings: Any) -> None:
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
        huge = {"model": "gpt-4.1", "messages": user("x" * 5000)}
        assert_openai_error(api.chat(huge), 413, "request_too_large")


class TestAuthentication:
    body = {"model": "gpt-4.1", "messages": user("hi")}

    def test_missing_key(self, client: Client, catalog: Catalog) -> None:
        assert_openai_error(Api(client, None).chat(self.body), 401, "invalid_api_key")

    def test_not_bearer(self, client: Client, catalog: Catalog, key: services.CreatedKey) -> None:
        response = client.post(
            "/v1/chat/completions",
            data=self.body,
            content_type="application/json",
            headers={"Authorization": f"Basic {key.plaintext}"},
        )
        assert_openai_error(response, 401, "invalid_api_key")

    def test_garbage_key(self, client: Client, catalog: Catalog) -> None:
        assert_openai_error(Api(client, "sk-not-ours").chat(self.body), 401, "invalid_api_key")

    def test_key_with_bad_checksum(self, client: Client, catalog: Catalog, key: services.CreatedKey) -> None:
        tampered = key.plaintext[:-1] + ("A" if key.plaintext[-1] != "A" else "B")
        assert_openai_error(Api(client, tampered).chat(self.body), 401, "invalid_api_key")

    def test_right_id_wrong_secret(self, client: Client, catalog: Catalog, key: services.CreatedKey) -> None:
        from tenants import keys

        # A well-formed key (valid checksum) that reuses a real key id with another secret.
        body = key.plaintext[: len(keys.PREFIX) + keys.KEY_ID_LENGTH + 1] + "x" * keys.SECRET_LENGTH
        forged = body + keys.checksum(body)
        assert keys.parse_key_id(forged) == key.api_key.key_id
        assert_openai_error(Api(client, forged).chat(self.body), 401, "invalid_api_key")

    def test_revoked_key(self, api: Api, catalog: Catalog, key: services.CreatedKey) -> None:
        assert api.chat(self.body).status_code == 200  # warms every cache tier
        services.api_key_revoke(api_key=key.api_key)
        assert_openai_error(api.chat(self.body), 401, "api_key_revoked")
        assert UsageRecord.objects.count() == 1, "the rejected call wrote nothing"

    def test_suspended_tenant(self, api: Api, catalog: Catalog, tenant: Tenant) -> None:
        assert api.chat(self.body).status_code == 200
        services.tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED)
        error = assert_openai_error(api.chat(self.body), 403, "tenant_suspended")
        assert "suspended" in error["message"]
        assert UsageRecord.objects.count() == 1, "the rejected call wrote nothing"

    def test_another_tenants_key_bills_that_tenant_only(
        self, client: Client, catalog: Catalog, key: services.CreatedKey, other_tenant: Tenant, make_key: Any
    ) -> None:
        other = make_key(other_tenant)
        assert Api(client, other.plaintext).chat(self.body).status_code == 200
        assert UsageRecord.objects.get().tenant == other_tenant


@pytest.mark.usefixtures("nothing_billed")
class TestUpstreamFailures:
    body = {"model": "broken", "messages": user("hi")}

    def test_upstream_down(self, api: Api, catalog: Catalog) -> None:
        dead = Upstream(base_url=f"http://127.0.0.1:{free_port()}/v1", port=0)
        catalog.add_http_model("broken", dead, "gpt-4.1")
        error = assert_openai_error(api.chat(self.body), 502, "upstream_unavailable")
        assert "127.0.0.1" not in error["message"]

    def test_upstream_down_when_streaming(self, api: Api, catalog: Catalog) -> None:
        dead = Upstream(base_url=f"http://127.0.0.1:{free_port()}/v1", port=0)
        catalog.add_http_model("broken", dead, "gpt-4.1")
        response = api.chat({**self.body, "stream": True})
        assert_openai_error(response, 502, "upstream_unavailable")

    @pytest.mark.parametrize("stream", [False, True])
    def test_upstream_garbage(self, api: Api, catalog: Catalog, mock_upstream: Upstream, stream: bool) -> None:
        catalog.add_http_model("broken", mock_upstream, "mock-garbage")
        assert_openai_error(api.chat({**self.body, "stream": stream}), 502, "upstream_bad_response")

    @pytest.mark.parametrize("stream", [False, True])
    def test_upstream_500(self, api: Api, catalog: Catalog, mock_upstream: Upstream, stream: bool) -> None:
        catalog.add_http_model("broken", mock_upstream, "mock-error-500")
        assert_openai_error(api.chat({**self.body, "stream": stream}), 502, "upstream_unavailable")

    def test_upstream_429_passes_retry_after(self, api: Api, catalog: Catalog, mock_upstream: Upstream) -> None:
        catalog.add_http_model("broken", mock_upstream, "mock-error-429")
        response = api.chat(self.body)
        assert_openai_error(response, 429, "rate_limit_exceeded")
        assert response["Retry-After"] == "1"

    def test_upstream_400_is_the_clients_to_fix(self, api: Api, catalog: Catalog, mock_upstream: Upstream) -> None:
        catalog.add_http_model("broken", mock_upstream, "mock-error-400")
        error = assert_openai_error(api.chat(self.body), 400, "upstream_rejected_request")
        assert "Mock upstream failure 400" in error["message"]

    def test_wrong_upstream_credential_is_not_leaked(
        self, api: Api, catalog: Catalog, mock_upstream: Upstream, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        catalog.add_http_model("broken", mock_upstream, "gpt-4.1")
        monkeypatch.setenv("TOLLWAY_TEST_UPSTREAM_KEY", "sk-wrong-credential")
        response = api.chat(self.body)
        error = assert_openai_error(response, 502, "upstream_authentication_failed")
        assert "sk-wrong-credential" not in response.content.decode()
        assert UPSTREAM_KEY not in error["message"]

    def test_missing_upstream_credential(
        self, api: Api, catalog: Catalog, mock_upstream: Upstream, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        catalog.add_http_model("broken", mock_upstream, "gpt-4.1")
        monkeypatch.delenv("TOLLWAY_TEST_UPSTREAM_KEY")
        assert_openai_error(api.chat(self.body), 502, "upstream_authentication_failed")

    def test_no_active_deployment(self, api: Api, catalog: Catalog) -> None:
        catalog.models["gpt-4.1"].deployments.update(is_active=False)
        from proxy.route import catalog_invalidate

        catalog_invalidate()
        assert_openai_error(api.chat({"model": "gpt-4.1", "messages": user("hi")}), 503, "no_available_deployment")
