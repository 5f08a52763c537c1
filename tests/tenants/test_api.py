"""The management API: /v1/keys and /v1/tenant, scoped to the caller's tenant."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from tenants import services
from tenants.models import ApiKey, Tenant
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db


class Manage:
    """A client holding a key, speaking JSON to the management API."""

    def __init__(self, client: Client, token: str) -> None:
        self.client, self.token = client, token

    def call(self, method: str, path: str, body: Any = None, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {self.token}"}, **extra}
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        return getattr(self.client, method)(path, **kwargs)


@pytest.fixture
def admin_key(tenant: Tenant, make_key: Any) -> services.CreatedKey:
    return make_key(tenant, "ops", scopes=["manage"])


@pytest.fixture
def manage(client: Client, admin_key: services.CreatedKey) -> Manage:
    return Manage(client, admin_key.plaintext)


@pytest.fixture
def other_manage(other_tenant: Tenant, make_key: Any) -> Manage:
    return Manage(Client(), make_key(other_tenant, "intruder", scopes=["manage"]).plaintext)


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


class TestKeyLifecycle:
    def test_create_shows_the_secret_once_and_it_works(self, manage: Manage, client: Client, catalog: Catalog) -> None:
        response = manage.call("post", "/v1/keys", {"name": "ci", "scopes": ["inference", "billing"]})
        assert response.status_code == 201
        body = response.json()
        assert body["object"] == "api_key" and body["name"] == "ci" and body["status"] == "active"
        assert body["scopes"] == ["inference", "billing"]
        assert body["secret"].startswith(f"tlw_{body['id']}_")
        assert body["redacted_value"] == f"tlw_{body['id']}_…{body['secret'][-4:]}"
        assert Api(client, body["secret"]).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200

        shown = manage.call("get", f"/v1/keys/{body['id']}").json()
        assert "secret" not in shown and body["secret"] not in str(shown)
        listed = manage.call("get", "/v1/keys").json()
        assert body["secret"] not in str(listed)

    def test_default_scope_is_inference(self, manage: Manage) -> None:
        assert manage.call("post", "/v1/keys", {}).json()["scopes"] == ["inference"]

    def test_list_is_newest_first_and_pages(self, manage: Manage, tenant: Tenant, make_key: Any) -> None:
        made = [make_key(tenant, f"k{i}").api_key.key_id for i in range(5)]
        first = manage.call("get", "/v1/keys?limit=3").json()
        assert first["object"] == "list" and first["has_more"] is True
        assert [k["id"] for k in first["data"]] == made[::-1][:3]
        rest = manage.call("get", f"/v1/keys?limit=3&after={first['data'][-1]['id']}").json()
        ids = [k["id"] for k in rest["data"]]
        assert ids == [*made[::-1][3:], manage_key_id(tenant)]
        assert rest["has_more"] is False

    def test_patch_changes_restrictions(self, manage: Manage, key: services.CreatedKey) -> None:
        response = manage.call(
            "patch",
            f"/v1/keys/{key.api_key.key_id}",
            {"name": "renamed", "allowed_models": ["gpt-4.1*"], "allowed_ips": ["10.0.0.1/8"], "rpm_limit": 60},
        )
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["name"] == "renamed" and body["allowed_models"] == ["gpt-4.1*"]
        assert body["allowed_ips"] == ["10.0.0.0/8"], "CIDRs are stored normalised"
        assert body["rpm_limit"] == 60 and body["scopes"] == ["inference"]

    def test_delete_revokes_idempotently(
        self, manage: Manage, key: services.CreatedKey, client: Client, catalog: Catalog
    ) -> None:
        first = manage.call("delete", f"/v1/keys/{key.api_key.key_id}")
        assert first.status_code == 200 and first.json()["status"] == "revoked"
        again = manage.call("delete", f"/v1/keys/{key.api_key.key_id}")
        assert again.status_code == 200 and again.json()["revoked_at"] == first.json()["revoked_at"]
        assert ApiKey.objects.filter(pk=key.api_key.pk).exists(), "revoked keys are kept for the ledger"
        rejected = Api(client, key.plaintext).chat({"model": "gpt-4.1", "messages": user("hi")})
        assert error(rejected, 401)["code"] == "api_key_revoked"

    def test_revoked_key_cannot_be_changed_or_rotated(self, manage: Manage, key: services.CreatedKey) -> None:
        manage.call("delete", f"/v1/keys/{key.api_key.key_id}")
        assert error(manage.call("patch", f"/v1/keys/{key.api_key.key_id}", {"name": "x"}), 400)["message"]
        assert error(manage.call("post", f"/v1/keys/{key.api_key.key_id}/rotate", {}), 400)["message"]

    def test_rotate_without_grace_stops_the_old_secret_at_once(
        self, manage: Manage, key: services.CreatedKey, client: Client, catalog: Catalog
    ) -> None:
        old = Api(client, key.plaintext)
        assert old.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
        rotated = manage.call("post", f"/v1/keys/{key.api_key.key_id}/rotate", {})
        assert rotated.status_code == 200
        body = rotated.json()
        assert body["id"] == key.api_key.key_id and body["secret"] != key.plaintext
        assert body["previous_secret_expires_at"] is None
        assert error(old.chat({"model": "gpt-4.1", "messages": user("hi")}), 401)["code"] == "invalid_api_key"
        assert Api(client, body["secret"]).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200

    def test_rotate_with_grace_keeps_both_until_it_ends(
        self, manage: Manage, key: services.CreatedKey, client: Client, catalog: Catalog
    ) -> None:
        body = manage.call("post", f"/v1/keys/{key.api_key.key_id}/rotate", {"grace_period_seconds": 3600}).json()
        assert body["previous_secret_expires_at"]
        for secret in (key.plaintext, body["secret"]):
            assert Api(client, secret).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
        # when the grace period is over, only the new secret works
        api_key = ApiKey.objects.get(pk=key.api_key.pk)
        api_key.previous_expires_at = timezone.now() - timedelta(seconds=1)
        api_key.save()
        assert Api(client, key.plaintext).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 401
        assert Api(client, body["secret"]).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200

    def test_expired_key_stops(self, tenant: Tenant, make_key: Any, client: Client, catalog: Catalog) -> None:
        soon = make_key(tenant, expires_at=timezone.now() + timedelta(milliseconds=300))
        api = Api(client, soon.plaintext)
        assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
        while timezone.now() <= soon.api_key.expires_at:
            pass
        assert error(api.chat({"model": "gpt-4.1", "messages": user("hi")}), 401)["code"] == "api_key_expired"

    def test_tenant_settings(self, manage: Manage, tenant: Tenant) -> None:
        body = manage.call("get", "/v1/tenant").json()
        assert body == {
            "id": "acme",
            "object": "tenant",
            "name": "Acme Corp",
            "status": "active",
            "billing_email": "",
            "currency": "USD",
            "timezone": "UTC",
            "allowed_models": [],
            "monthly_budget_usd": None,
            "rpm_limit": None,
            "tpm_limit": None,
            "max_concurrent": None,
            "created_at": body["created_at"],
            "billing": {
                "month": timezone.now().strftime("%Y-%m"),
                "payment": "postpaid",
                "spend_usd": "0.000000000",
                "reserved_usd": "0.000000000",
                "budget_usd": None,
                "budget_remaining_usd": None,
                "credit_balance_usd": None,
            },
        }
        changed = manage.call("patch", "/v1/tenant", {"billing_email": "ap@acme.example", "name": "Acme"}).json()
        assert (changed["billing_email"], changed["name"]) == ("ap@acme.example", "Acme")
        assert error(manage.call("patch", "/v1/tenant", {"status": "active"}), 400)["param"] == "status"
        assert error(manage.call("patch", "/v1/tenant", {"billing_email": "nope"}), 400)["param"] == "billing_email"

    def test_schema_describes_the_api(self, client: Client) -> None:
        response = client.get("/v1/schema", HTTP_ACCEPT="application/json")
        assert response.status_code == 200
        schema = response.json()
        assert {"/v1/keys", "/v1/keys/{key_id}", "/v1/keys/{key_id}/rotate", "/v1/tenant"} <= set(schema["paths"])
        assert schema["components"]["securitySchemes"]["TollwayKey"]["scheme"] == "bearer"


def manage_key_id(tenant: Tenant) -> str:
    return ApiKey.objects.get(tenant=tenant, name="ops").key_id


class TestBadInput:
    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"scopes": ["inference", "root"]}, "scopes"),
            ({"scopes": []}, "scopes"),
            ({"allowed_ips": ["10.0.0.0/33"]}, "allowed_ips"),
            ({"allowed_ips": ["not-an-ip"]}, "allowed_ips"),
            ({"allowed_models": ["gpt-[4"]}, "allowed_models"),
            ({"allowed_models": ["has space"]}, "allowed_models"),
            ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
            ({"rpm_limit": 0}, "rpm_limit"),
            ({"monthly_budget_usd": "-1"}, "monthly_budget_usd"),
            ({"colour": "blue"}, "colour"),
        ],
    )
    def test_create_rejects_with_the_field_named(self, manage: Manage, body: dict[str, Any], param: str) -> None:
        err = error(manage.call("post", "/v1/keys", body), 400)
        assert err["param"].startswith(param), err
        assert err["type"] == "invalid_request_error"
        assert ApiKey.objects.count() == 1, "nothing was created"

    def test_malformed_json(self, manage: Manage) -> None:
        response = manage.call("post", "/v1/keys", data=b"{", content_type="application/json")
        assert error(response, 400)["code"] == "invalid_json"

    def test_bad_grace(self, manage: Manage, key: services.CreatedKey) -> None:
        err = error(manage.call("post", f"/v1/keys/{key.api_key.key_id}/rotate", {"grace_period_seconds": -1}), 400)
        assert err["param"] == "grace_period_seconds"

    def test_bad_page_size(self, manage: Manage) -> None:
        assert error(manage.call("get", "/v1/keys?limit=1000"), 400)["param"] == "limit"


class TestScopesAndAccess:
    def test_inference_key_cannot_manage(self, client: Client, key: services.CreatedKey) -> None:
        err = error(Manage(client, key.plaintext).call("get", "/v1/keys"), 403)
        assert err["code"] == "insufficient_scope" and "manage" in err["message"]

    def test_manage_key_cannot_infer(self, client: Client, admin_key: services.CreatedKey, catalog: Catalog) -> None:
        err = error(Api(client, admin_key.plaintext).chat({"model": "gpt-4.1", "messages": user("hi")}), 403)
        assert err["code"] == "insufficient_scope"
        assert error(Api(client, admin_key.plaintext).get("/v1/models"), 403)["code"] == "insufficient_scope"

    def test_no_key(self, client: Client) -> None:
        response = client.get("/v1/keys")
        assert error(response, 401)["code"] == "invalid_api_key"
        assert response["WWW-Authenticate"].startswith("Bearer")

    def test_suspended_tenant_cannot_manage(self, manage: Manage, tenant: Tenant) -> None:
        services.tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED)
        assert error(manage.call("get", "/v1/keys"), 403)["code"] == "tenant_suspended"

    def test_model_allow_list(self, tenant: Tenant, make_key: Any, client: Client, catalog: Catalog) -> None:
        api = Api(client, make_key(tenant, allowed_models=["gpt-4.1*"]).plaintext)
        assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
        err = error(api.chat({"model": "deepseek-v3", "messages": user("hi")}), 404)
        assert err["code"] == "model_not_found" and err["param"] == "model"
        assert [m["id"] for m in api.get("/v1/models").json()["data"]] == ["gpt-4.1"]
        assert api.get("/v1/models/deepseek-v3").status_code == 404

    def test_tenant_model_allow_list_bounds_every_key(
        self, tenant: Tenant, key: services.CreatedKey, client: Client, catalog: Catalog
    ) -> None:
        services.tenant_update(tenant=tenant, allowed_models=["deepseek-*"])
        api = Api(client, key.plaintext)
        assert error(api.chat({"model": "gpt-4.1", "messages": user("hi")}), 404)["code"] == "model_not_found"
        assert api.chat({"model": "deepseek-v3", "messages": user("hi")}).status_code == 200

    def test_ip_allow_list_believes_only_trusted_proxies(
        self, tenant: Tenant, make_key: Any, client: Client, catalog: Catalog
    ) -> None:
        headers = {"Authorization": f"Bearer {make_key(tenant, allowed_ips=['10.0.0.0/8']).plaintext}"}
        body = {"model": "gpt-4.1", "messages": user("hi")}

        def call(remote: str, forwarded: str | None = None) -> Any:
            extra: dict[str, Any] = {"REMOTE_ADDR": remote}
            if forwarded:
                extra["HTTP_X_FORWARDED_FOR"] = forwarded
            return client.post(
                "/v1/chat/completions", data=body, content_type="application/json", headers=headers, **extra
            )

        assert error(call("127.0.0.1"), 403)["code"] == "ip_not_allowed"
        assert call("10.1.2.3").status_code == 200
        # nginx on loopback (trusted) forwards the real client
        assert call("127.0.0.1", "10.9.9.9").status_code == 200
        # a client cannot claim an address by sending the header itself
        assert error(call("127.0.0.1", "10.9.9.9, 203.0.113.7"), 403)["code"] == "ip_not_allowed"
        assert error(call("203.0.113.7", "10.9.9.9"), 403)["code"] == "ip_not_allowed"


class TestIsolation:
    """Every endpoint, with two tenants: another tenant's ids answer 404."""

    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [("get", "", None), ("patch", "", {"name": "mine now"}), ("delete", "", None), ("post", "/rotate", {})],
    )
    def test_another_tenants_key_is_not_found(
        self, other_manage: Manage, key: services.CreatedKey, method: str, suffix: str, body: Any
    ) -> None:
        err = error(other_manage.call(method, f"/v1/keys/{key.api_key.key_id}{suffix}", body), 404)
        assert err["code"] == "not_found"
        fresh = ApiKey.objects.get(pk=key.api_key.pk)
        assert (fresh.name, fresh.revoked_at, fresh.secret_hash) == ("test", None, key.api_key.secret_hash)

    def test_list_shows_only_own_keys(self, manage: Manage, other_manage: Manage, key: services.CreatedKey) -> None:
        mine = {k["id"] for k in manage.call("get", "/v1/keys").json()["data"]}
        theirs = {k["id"] for k in other_manage.call("get", "/v1/keys").json()["data"]}
        assert key.api_key.key_id in mine and key.api_key.key_id not in theirs
        assert not mine & theirs

    def test_paging_cursor_from_another_tenant_is_not_found(
        self, other_manage: Manage, key: services.CreatedKey
    ) -> None:
        assert error(other_manage.call("get", f"/v1/keys?after={key.api_key.key_id}"), 404)["code"] == "not_found"

    def test_tenant_endpoint_is_the_callers(self, manage: Manage, other_manage: Manage) -> None:
        assert manage.call("get", "/v1/tenant").json()["id"] == "acme"
        assert other_manage.call("get", "/v1/tenant").json()["id"] == "globex"
        other_manage.call("patch", "/v1/tenant", {"name": "Globex Inc"})
        assert Tenant.objects.get(slug="acme").name == "Acme Corp"

    def test_created_key_belongs_to_the_caller(self, other_manage: Manage, other_tenant: Tenant) -> None:
        created = other_manage.call("post", "/v1/keys", {"name": "theirs"}).json()
        assert ApiKey.objects.get(key_id=created["id"]).tenant == other_tenant
