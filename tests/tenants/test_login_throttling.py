"""Login throttling (django-axes): the admin and the tenant login lock a user name after
``TOLLWAY_LOGIN_FAILURE_LIMIT`` wrong passwords from one address, the right one included,
and say so; the API-key path is untouched."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tenants.models import Tenant
from tests.conftest import Api, Catalog, user
from tests.pages import PASSWORD, member

pytestmark = pytest.mark.django_db

LOGINS = {
    "tenant": ("/accounts/login/", "/dashboard/"),
    "admin": ("/admin/login/?next=/admin/", "/admin/"),
}


def with_password(person: User) -> User:
    person.set_password(PASSWORD)  # with the tests' fast hasher
    person.save()
    return person


@pytest.fixture
def olivia(tenant: Tenant) -> User:
    person = member(tenant, "olivia")
    person.is_staff = True
    person.is_superuser = True
    return with_password(person)


def log_in(client: Client, path: str, password: str, username: str = "olivia", ip: str = "203.0.113.7") -> Any:
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=ip)


@pytest.mark.parametrize("login", LOGINS)
def test_25_wrong_passwords_then_the_right_one_is_still_locked_out(client: Client, olivia: User, login: str) -> None:
    path, _ = LOGINS[login]
    for _ in range(25):
        response = log_in(client, path, "wrong password")
        assert response.status_code in (200, 429)  # the form again, then the lockout
    response = log_in(client, path, PASSWORD)
    assert response.status_code == 429
    text = response.content.decode()
    assert "Too many failed logins" in text and "5 failed attempts" in text
    assert "_auth_user_id" not in client.session, "not logged in"


def test_the_limit_is_the_setting_and_a_success_resets_the_count(client: Client, olivia: User, settings: Any) -> None:
    path, _ = LOGINS["tenant"]
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, path, "wrong").status_code == 200
    assert log_in(client, path, PASSWORD).status_code == 302  # below the limit: in
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, path, "wrong").status_code == 200, "the count started again"
    assert log_in(client, path, PASSWORD).status_code == 302


def test_a_locked_login_does_not_lock_others(client: Client, olivia: User, tenant: Tenant) -> None:
    path, _ = LOGINS["tenant"]
    with_password(member(tenant, "bob"))
    for _ in range(6):
        log_in(client, path, "wrong")
    assert log_in(client, path, PASSWORD).status_code == 429
    assert log_in(Client(), path, PASSWORD, username="bob").status_code == 302
    assert log_in(Client(), path, PASSWORD, ip="198.51.100.9").status_code == 302, "same user, another address"


def test_the_api_key_path_never_consults_it(api: Api, catalog: Catalog, client: Client, olivia: User) -> None:
    for _ in range(6):
        log_in(client, LOGINS["tenant"][0], "wrong", ip="127.0.0.1")
    assert api.chat({"model": "gpt-4.1", "messages": user("warm")}).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
    assert not [q for q in queries.captured_queries if "axes" in (q["sql"] or "")]
