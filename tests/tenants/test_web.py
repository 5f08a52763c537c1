"""Tenant users: accounts made in the admin, Django's own auth pages, and key management."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.test import Client

from tenants import keys, services
from tenants.models import ApiKey, Membership, Tenant
from tests.pages import member


def test_the_admin_gives_a_user_a_tenant_and_role(admin_client: Client, tenant: Tenant) -> None:
    user = get_user_model().objects.create_user(username="newhire")
    page = admin_client.get(f"/admin/auth/user/{user.pk}/change/")
    assert page.status_code == 200
    assert b"membership-0-role" in page.content or b"membership-__prefix__-role" in page.content
    response = admin_client.post(
        "/admin/tenants/membership/add/", {"user": user.pk, "tenant": tenant.pk, "role": "developer"}
    )
    assert response.status_code == 302, response.content
    assert Membership.objects.get(user=user).tenant == tenant


def test_adding_a_user_in_the_admin_asks_for_the_email_resets_go_to(admin_client: Client, tenant: Tenant) -> None:
    page = admin_client.get("/admin/auth/user/add/")
    assert b'name="email"' in page.content
    fields = {"username": "newhire", "usable_password": "true", "password1": "k8#vQ2!pLm", "password2": "k8#vQ2!pLm"}
    # the Membership box is on the same page: tenant and role in one step
    fields |= {"membership-TOTAL_FORMS": "1", "membership-INITIAL_FORMS": "0"}
    fields |= {"membership-0-tenant": str(tenant.pk), "membership-0-role": "developer"}
    missing = admin_client.post("/admin/auth/user/add/", fields)
    assert missing.status_code == 200 and b'id="id_email_error"' in missing.content
    added = admin_client.post("/admin/auth/user/add/", {**fields, "email": "newhire@example.com"})
    assert added.status_code == 302, added.content
    user = get_user_model().objects.get(username="newhire")
    assert user.email == "newhire@example.com" and Membership.objects.get(user=user).tenant == tenant


def test_password_reset_is_djangos_own(client: Client, db: None) -> None:
    assert client.get("/accounts/password_reset/").status_code == 200


def test_an_owner_creates_a_key_and_sees_the_secret_once(client: Client, tenant: Tenant) -> None:
    client.force_login(member(tenant, "olivia"))
    page = client.post("/dashboard/keys/create", {"name": "ci", "scopes": ["inference", "billing"]})
    assert page.status_code == 200
    key = ApiKey.objects.get(name="ci", tenant=tenant)
    assert key.scopes == ["inference", "billing"]
    found = re.search(r'id="new-secret"[^>]*>(tlw_[^<]+)<', page.content.decode())
    assert found is not None
    secret = found.group(1)
    assert keys.matches(secret, key.secret_hash)
    assert secret not in client.get("/dashboard/").content.decode()  # shown once only

    assert client.post(f"/dashboard/keys/{key.key_id}/revoke").status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_playground_keys_stay_out_of_the_key_list(client: Client, tenant: Tenant) -> None:
    owner = member(tenant, "olivia")
    services.playground_key_get(membership=Membership.objects.get(user=owner))
    client.force_login(owner)
    assert b"Playground: olivia" not in client.get("/dashboard/").content
