"""createtenant and createapikey, as an operator runs them."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from billing.models import UsageRecord
from tenants.models import ApiKey, Tenant
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_createtenant_with_budget() -> None:
    output = run("createtenant", "acme", "--name", "Acme Corp", "--monthly-budget-usd", "250.50")
    tenant = Tenant.objects.get(slug="acme")
    assert tenant.name == "Acme Corp"
    assert tenant.monthly_budget_usd == Decimal("250.50")
    assert tenant.status == Tenant.Status.ACTIVE
    assert "acme" in output


@pytest.mark.parametrize("budget", ["lots", "-5", "NaN"])
def test_createtenant_rejects_bad_budget(budget: str) -> None:
    with pytest.raises(CommandError, match="monthly-budget-usd"):
        run("createtenant", "acme", "--monthly-budget-usd", budget)
    assert not Tenant.objects.exists()


def test_createtenant_rejects_duplicate_and_bad_slug() -> None:
    run("createtenant", "acme")
    with pytest.raises(CommandError, match="slug"):
        run("createtenant", "acme")
    with pytest.raises(CommandError, match="slug"):
        run("createtenant", "not a slug!")


def test_createapikey_prints_a_working_key_last(client: Client, catalog: Catalog) -> None:
    run("createtenant", "acme")
    output = run("createapikey", "acme", "--name", "ci")
    plaintext = output.strip().splitlines()[-1]
    assert plaintext.startswith("tlw_")
    assert ApiKey.objects.get().name == "ci"
    response = Api(client, plaintext).chat({"model": "gpt-4.1", "messages": user("hi")})
    assert response.status_code == 200
    assert UsageRecord.objects.get().tenant.slug == "acme"


def test_createapikey_for_unknown_tenant() -> None:
    with pytest.raises(CommandError, match="createtenant"):
        run("createapikey", "nobody")


def test_createapikey_with_scopes() -> None:
    run("createtenant", "acme")
    run("createapikey", "acme", "--scopes", "manage,billing")
    assert ApiKey.objects.get().scopes == ["manage", "billing"]


def test_createapikey_rejects_unknown_scope() -> None:
    run("createtenant", "acme")
    with pytest.raises(CommandError, match="scopes"):
        run("createapikey", "acme", "--scopes", "inference,admin")
    assert not ApiKey.objects.exists()
