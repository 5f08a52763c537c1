"""Keys stay secret: never in the database, the logs, errors or the admin pages."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse

from tenants import activity
from tenants.models import ApiKey
from tenants.tasks import flush_last_used
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db


def all_database_text() -> str:
    """Every row of every table, as text."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608  # table names come from introspection
            chunks.append(repr(cursor.fetchall()))
    return "\n".join(chunks)


def test_no_secret_in_database_logs_or_admin(
    client: Client, catalog: Catalog, caplog: pytest.LogCaptureFixture, tenant: Any, make_key: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    manager = make_key(tenant, "ops", scopes=["manage"])
    headers = {"Authorization": f"Bearer {manager.plaintext}"}
    created = client.post("/v1/keys", data={"name": "ci"}, content_type="application/json", headers=headers).json()
    rotated = client.post(
        f"/v1/keys/{created['id']}/rotate",
        data={"grace_period_seconds": 60},
        content_type="application/json",
        headers=headers,
    ).json()
    secrets = [manager.plaintext, created["secret"], rotated["secret"]]
    api = Api(client, rotated["secret"])
    assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
    assert api.chat({"model": "gpt-9", "messages": user("hi")}).status_code == 404
    wrong = rotated["secret"][:-6] + "AAAAAA"
    assert Api(client, wrong).chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 401
    flush_last_used()

    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    admin_client = Client()
    admin_client.force_login(admin)
    pages = [
        admin_client.get(reverse("admin:tenants_apikey_changelist")).content.decode(),
        admin_client.get(reverse("admin:tenants_tenant_change", args=[tenant.pk])).content.decode(),
        *(
            admin_client.get(reverse("admin:tenants_apikey_change", args=[k.pk])).content.decode()
            for k in ApiKey.objects.all()
        ),
    ]
    haystacks = {"database": all_database_text(), "logs": caplog.text, "admin": "\n".join(pages)}
    for secret in secrets:
        body = secret.split("_", 2)[2]  # the secret part, after the public key id
        for where, text in haystacks.items():
            assert body[:20] not in text, f"a secret leaked into the {where}"
    assert created["id"] in haystacks["admin"], "keys are still shown by their public id"


def test_last_used_is_batched_not_written_per_request(
    client: Client, catalog: Catalog, key: Any, django_assert_num_queries: Any
) -> None:
    api = Api(client, key.plaintext)
    assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
    with django_assert_num_queries(1):  # the ledger insert only
        assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
    assert ApiKey.objects.get(pk=key.api_key.pk).last_used_at is None
    assert flush_last_used() == 1
    first = ApiKey.objects.get(pk=key.api_key.pk).last_used_at
    assert first is not None
    assert flush_last_used() == 0, "nothing new to write"
    activity.forget_local()  # as if the throttle window had passed
    assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
    assert flush_last_used() == 1
    later = ApiKey.objects.get(pk=key.api_key.pk).last_used_at
    assert later is not None and later > first


def test_admin_finds_a_key_by_what_it_shows(client: Client, key: Any) -> None:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    url = reverse("admin:tenants_apikey_changelist")
    for term in (key.api_key.display, key.plaintext, "acme"):
        page = client.get(url, {"q": term}).content.decode()
        assert key.api_key.key_id in page, term
    assert key.api_key.key_id not in client.get(url, {"q": "tlw_zzzzzzzz"}).content.decode()
