"""The Django admin: every model manageable, keys shown once, the ledger read-only."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from billing.models import UsageRecord
from tenants.models import ApiKey, Tenant
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client: Client) -> Client:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    return client


@pytest.mark.parametrize(
    "name",
    [
        "tenants_tenant",
        "tenants_apikey",
        "billing_model",
        "billing_usagerecord",
        "proxy_provider",
        "proxy_deployment",
        "proxy_fallback",
    ],
)
def test_every_changelist_renders(admin_client: Client, catalog: Catalog, api: Api, name: str) -> None:
    api.chat({"model": "gpt-4.1", "messages": user("hi")})
    response = admin_client.get(reverse(f"admin:{name}_changelist"))
    assert response.status_code == 200


def test_model_page_edits_prices_and_deployments(admin_client: Client, catalog: Catalog) -> None:
    response = admin_client.get(reverse("admin:billing_model_change", args=[catalog.models["gpt-4.1"].pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "prices-TOTAL_FORMS" in content and "deployments-TOTAL_FORMS" in content
    assert "fallbacks-TOTAL_FORMS" in content


def test_ledger_is_read_only(admin_client: Client, catalog: Catalog, api: Api) -> None:
    api.chat({"model": "gpt-4.1", "messages": user("hi")})
    row = UsageRecord.objects.get()
    assert admin_client.get(reverse("admin:billing_usagerecord_add")).status_code == 403
    assert admin_client.get(reverse("admin:billing_usagerecord_delete", args=[row.pk])).status_code == 403
    view = admin_client.get(reverse("admin:billing_usagerecord_change", args=[row.pk]))
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    admin_client.post(reverse("admin:billing_usagerecord_change", args=[row.pk]), {"cost": "0"})
    row.refresh_from_db()
    assert row.cost > 0


def test_adding_a_key_shows_the_secret_once(admin_client: Client, tenant: Tenant, catalog: Catalog) -> None:
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {
            "tenant": tenant.pk,
            "name": "from admin",
            "scopes": ["inference", "billing"],
            "allowed_models": "gpt-4.1*, deepseek-*",
            "allowed_ips": "",
            "expires_at_0": "",
            "expires_at_1": "",
        },
        follow=True,
    )
    assert response.status_code == 200
    shown = re.findall(r"tlw_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}", response.content.decode())
    assert len(set(shown)) == 1
    key = ApiKey.objects.get()
    assert key.name == "from admin"
    assert (key.scopes, key.allowed_models, key.allowed_ips) == (
        ["inference", "billing"],
        ["gpt-4.1*", "deepseek-*"],
        [],
    )
    # it works, and its page never shows the secret again
    assert Api(Client(), shown[0]).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
    page = admin_client.get(reverse("admin:tenants_apikey_change", args=[key.pk])).content.decode()
    assert shown[0] not in page and shown[0][-4:] in page


def test_revoke_action(admin_client: Client, key, catalog: Catalog, client: Client) -> None:
    assert Api(client, key.plaintext).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
    admin_client.post(
        reverse("admin:tenants_apikey_changelist"), {"action": "revoke", "_selected_action": [key.api_key.pk]}
    )
    assert ApiKey.objects.get().revoked_at is not None
    assert Api(client, key.plaintext).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 401


def test_suspend_action(admin_client: Client, key, tenant: Tenant, catalog: Catalog, client: Client) -> None:
    admin_client.post(
        reverse("admin:tenants_tenant_changelist"), {"action": "suspend", "_selected_action": [tenant.pk]}
    )
    assert Api(client, key.plaintext).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 403


def test_admin_rejects_bad_restrictions(admin_client: Client, tenant: Tenant) -> None:
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {"tenant": tenant.pk, "scopes": ["inference"], "allowed_ips": "10.0.0.0/33", "allowed_models": "gpt-[4"},
    )
    assert response.status_code == 200  # the form again, with errors
    content = response.content.decode()
    assert "is not an IP address or CIDR" in content and "is not a model pattern" in content
    assert not ApiKey.objects.exists()
