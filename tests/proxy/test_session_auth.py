"""The playground's path into the API: the login cookie, with a CSRF token, instead of a key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.models import UsageRecord
from tenants.models import ApiKey, Membership, Tenant
from tests.conftest import Catalog
from tests.pages import member

BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]}


def logged_in(username: str) -> tuple[Client, str]:
    """A browser-like client (CSRF enforced) that has logged in and holds a CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.get(username=username))
    client.get("/chat/")  # sets the csrftoken cookie, as the page does
    return client, client.cookies["csrftoken"].value


def chat(client: Client, **headers: str) -> Any:
    return client.post("/v1/chat/completions", json.dumps(BODY), content_type="application/json", headers=headers)


def test_a_member_chats_with_the_cookie_and_the_row_names_the_user(tenant: Tenant, catalog: Catalog) -> None:
    member(tenant, "dev", Membership.Role.DEVELOPER)
    client, token = logged_in("dev")

    response = chat(client, **{"X-CSRFToken": token})
    assert response.status_code == 200, response.content
    again = chat(client, **{"X-CSRFToken": token})
    assert again.status_code == 200

    rows = UsageRecord.objects.select_related("api_key__user").filter(tenant=tenant)
    assert rows.count() == 2
    assert {row.api_key.user.get_username() for row in rows if row.api_key and row.api_key.user} == {"dev"}
    assert ApiKey.objects.filter(tenant=tenant, user__username="dev").count() == 1  # one key, reused


def test_the_cookie_without_a_csrf_token_is_refused(tenant: Tenant, catalog: Catalog) -> None:
    member(tenant, "dev", Membership.Role.DEVELOPER)
    client, _ = logged_in("dev")
    response = chat(client)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "CSRF" in response.json()["error"]["message"]
    assert not UsageRecord.objects.exists()


def test_the_billing_role_cannot_call_models(tenant: Tenant, catalog: Catalog) -> None:
    member(tenant, "finance", Membership.Role.BILLING)
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.get(username="finance"))
    client.get("/dashboard/")
    response = chat(client, **{"X-CSRFToken": client.cookies["csrftoken"].value})
    assert response.status_code == 403
    assert "Billing role" in response.json()["error"]["message"]


def test_a_key_header_wins_over_the_cookie(tenant: Tenant, catalog: Catalog) -> None:
    member(tenant, "dev", Membership.Role.DEVELOPER)
    client, token = logged_in("dev")
    response = chat(client, **{"X-CSRFToken": token, "Authorization": "Bearer tlw_not_a_real_key"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.django_db
def test_a_stale_cookie_is_not_logged_in(client: Client) -> None:
    client.cookies["sessionid"] = "stale"
    client.get("/accounts/login/")  # a CSRF token, so the login is what fails
    token = client.cookies["csrftoken"].value
    response = chat(client, **{"X-CSRFToken": token})
    assert response.status_code == 401
    assert "not logged in" in response.json()["error"]["message"]
