"""The tenant's request log, usage CSV, price list and key form, through Django's test
client: filters and paging, the export streamed and scoped, the plan's markup in the
prices, a key with its limits; and another tenant's ids answer 404."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from billing import views_usage
from billing.models import Account, Plan, PlanModelMarkup, Price, UsageRecord
from billing.pricing import TokenUsage
from tenants import services
from tenants.models import ApiKey, Membership, Tenant
from tests.billing.factories import save, snapshot, usage_row
from tests.conftest import Catalog
from tests.pages import member

pytestmark = pytest.mark.django_db


def login(client: Client, username: str) -> Client:
    client.force_login(get_user_model().objects.get(username=username))
    return client


@pytest.fixture
def history(tenant: Tenant, other_tenant: Tenant, catalog: Catalog) -> dict[str, ApiKey]:
    """60 calls of ours on gpt-4.1 with key 'backend' (one an hour, the newest cut short),
    5 on deepseek-v3 with key 'batch', 3 days ago, and 7 of another tenant's."""
    backend = services.api_key_create(tenant=tenant, name="backend").api_key
    batch = services.api_key_create(tenant=tenant, name="batch").api_key
    theirs = services.api_key_create(tenant=other_tenant, name="theirs").api_key
    now = timezone.now()
    rows = [
        usage_row(
            tenant=tenant,
            model=catalog.models["gpt-4.1"],
            at=now - timedelta(hours=i, minutes=1),
            price=snapshot("8", "32"),
            usage=TokenUsage(input_tokens=1000 + i, output_tokens=10),
            api_key=backend,
        )
        for i in range(60)
    ]
    rows[0].outcome = UsageRecord.Outcome.CLIENT_GONE
    rows += [
        usage_row(
            tenant=tenant,
            model=catalog.models["deepseek-v3"],
            at=now - timedelta(days=3, minutes=i),
            price=snapshot("1", "2"),
            usage=TokenUsage(input_tokens=500, output_tokens=5),
            api_key=batch,
        )
        for i in range(5)
    ]
    rows += [
        usage_row(
            tenant=other_tenant,
            model=catalog.models["gpt-4.1"],
            at=now - timedelta(minutes=i),
            price=snapshot("8", "32"),
            usage=TokenUsage(input_tokens=7777, output_tokens=7),
            api_key=theirs,
        )
        for i in range(7)
    ]
    save(rows)
    member(tenant, "olivia")
    return {"backend": backend, "batch": batch, "theirs": theirs}


def rows_of(page: str) -> int:
    return page.count("<tr data-row=")


def test_the_request_log_pages_through_every_call(client: Client, history: dict[str, ApiKey]) -> None:
    login(client, "olivia")
    first = client.get("/dashboard/requests/").content.decode()
    assert rows_of(first) == 50
    assert "7777" not in first  # another tenant's calls are not ours
    older = first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    second = client.get("/dashboard/requests/" + older).content.decode()
    assert rows_of(second) == 15  # 65 in all
    assert 'rel="next"' not in second and "← Newest" in second
    # pages do not overlap
    ids = lambda page: {chunk.split('"')[1] for chunk in page.split("<tr data-row=")[1:]}  # noqa: E731
    assert not ids(first) & ids(second)


def test_the_request_log_filters_by_model_key_outcome_and_date(client: Client, history: dict[str, ApiKey]) -> None:
    login(client, "olivia")
    get = lambda **q: client.get("/dashboard/requests/", q).content.decode()  # noqa: E731
    assert rows_of(get(model="deepseek-v3")) == 5
    assert rows_of(get(key=history["batch"].key_id)) == 5
    cut = get(outcome="client_disconnected")
    assert rows_of(cut) == 1 and "Client disconnected" in cut
    day = (timezone.now() - timedelta(days=3)).astimezone(timezone.get_current_timezone()).date().isoformat()
    assert rows_of(get(**{"from": day, "to": day})) == 5 + sum(
        1
        for r in UsageRecord.objects.filter(model__name="gpt-4.1", api_key=history["backend"])
        if r.created_at.date().isoformat() == day
    )
    # a filter no row matches is an empty page, not an error
    assert "No requests match." in get(model="gpt-4.1", key=history["batch"].key_id)


def test_a_bad_filter_is_said_and_another_tenants_ids_answer_404(client: Client, history: dict[str, ApiKey]) -> None:
    login(client, "olivia")
    bad = client.get("/dashboard/requests/", {"from": "yesterday"})
    assert bad.status_code == 400 and "use YYYY-MM-DD" in bad.content.decode()
    assert client.get("/dashboard/requests/", {"outcome": "exploded"}).status_code == 400
    assert client.get("/dashboard/requests/", {"key": history["theirs"].key_id}).status_code == 404
    assert client.get("/dashboard/usage.csv", {"key": history["theirs"].key_id}).status_code == 404
    their_row = UsageRecord.objects.filter(api_key=history["theirs"]).first()
    assert their_row is not None
    assert client.get("/dashboard/requests/", {"before": their_row.pk}).status_code == 404
    assert client.get("/dashboard/requests/", {"model": "no-such-model"}).status_code == 404


def test_the_usage_csv_is_streamed_scoped_and_filtered(
    client: Client, history: dict[str, ApiKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views_usage, "CSV_CHUNK", 7)  # read in batches of 7: none lost, none twice
    login(client, "olivia")
    response = client.get("/dashboard/usage.csv")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"].startswith('attachment; filename="usage-acme-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))  # type: ignore[attr-defined]
    assert len(rows) == 65  # every call, not a page; none of the other tenant's
    assert len({r["request_id"] for r in rows}) == 65
    assert {r["key_name"] for r in rows} == {"backend", "batch"}
    total = sum(Decimal(r["cost_usd"]) for r in rows)
    assert total == sum(UsageRecord.objects.filter(tenant__slug="acme").values_list("cost", flat=True))
    assert rows[0]["key"] == history["backend"].display
    filtered = client.get("/dashboard/usage.csv", {"model": "deepseek-v3"})
    assert len(b"".join(filtered.streaming_content).splitlines()) == 1 + 5  # type: ignore[attr-defined]


def test_the_price_list_shows_the_tenants_own_prices(client: Client, tenant: Tenant, catalog: Catalog) -> None:
    plan = Plan.objects.create(name="Growth", markup_percent=Decimal(20))
    PlanModelMarkup.objects.create(plan=plan, model=catalog.models["deepseek-v3"], markup_percent=Decimal(0))
    Account.objects.create(tenant=tenant, plan=plan)
    Price.objects.create(
        model=catalog.models["gpt-4.1"],
        input_per_mtok=Decimal(6),
        output_per_mtok=Decimal(24),
        effective_from=timezone.now() + timedelta(days=10),
    )
    member(tenant, "olivia")
    page = login(client, "olivia").get("/dashboard/prices/").content.decode()
    assert "Plan <strong>Growth</strong>: list price + 20 %" in page
    gpt = page.split('<tr data-model="gpt-4.1">')[1].split("</tr>")[0]
    assert '<td class="num">$9.60</td>' in gpt and '<td class="num">$38.40</td>' in gpt  # $8 / $32 + 20 %
    assert "$7.20 / $28.80" in gpt  # the scheduled price, marked up too
    deepseek = page.split('<tr data-model="deepseek-v3">')[1].split("</tr>")[0]
    assert "0 %" in deepseek  # the plan's per-model markup
    # a tenant limited to some models sees only those
    Tenant.objects.filter(pk=tenant.pk).update(allowed_models=["deepseek-*"])
    page = client.get("/dashboard/prices/").content.decode()
    assert 'data-model="deepseek-v3"' in page and 'data-model="gpt-4.1"' not in page


def test_a_key_made_on_the_dashboard_carries_its_expiry_limits_budget_and_models(
    client: Client, tenant: Tenant
) -> None:
    member(tenant, "olivia")
    login(client, "olivia")
    expires = (timezone.now() + timedelta(days=30)).date()
    form = {
        "name": "ci",
        "scopes": ["inference", "billing"],
        "expires_on": expires.isoformat(),
        "rpm_limit": "60",
        "tpm_limit": "100000",
        "max_concurrent": "4",
        "monthly_budget_usd": "25.50",
        "allowed_models": "gpt-4.1*, deepseek-v3",
    }
    response = client.post("/dashboard/keys/create", form)
    assert response.status_code == 200 and "tlw_" in response.content.decode()
    key = ApiKey.objects.get(name="ci")
    assert (key.rpm_limit, key.tpm_limit, key.max_concurrent) == (60, 100000, 4)
    assert key.monthly_budget_usd == Decimal("25.50")
    assert key.allowed_models == ["gpt-4.1*", "deepseek-v3"] and key.scopes == ["inference", "billing"]
    assert key.expires_at is not None and key.expires_at.astimezone(timezone.get_current_timezone()).date() == expires
    listed = client.get("/dashboard/").content.decode()
    assert "60 rpm" in listed and "$25.50/month" in listed and expires.isoformat() in listed

    # an expiry in the past: the form again, saying so, and no key
    past = client.post("/dashboard/keys/create", {**form, "name": "late", "expires_on": "2020-01-01"})
    assert past.status_code == 400 and "The expiry must be in the future." in past.content.decode()
    assert 'value="late"' in past.content.decode()  # what was typed is kept
    bad = client.post("/dashboard/keys/create", {**form, "name": "neg", "rpm_limit": "-1"})
    assert bad.status_code == 400
    assert not ApiKey.objects.filter(name__in=["late", "neg"]).exists()


def test_a_developer_sees_the_log_and_prices_but_makes_no_keys(client: Client, tenant: Tenant) -> None:
    member(tenant, "dev", Membership.Role.DEVELOPER)
    login(client, "dev")
    assert client.get("/dashboard/requests/").status_code == 200
    assert client.get("/dashboard/prices/").status_code == 200
    assert client.post("/dashboard/keys/create", {"name": "x"}).status_code == 403
    for path in ("/dashboard/requests/", "/dashboard/usage.csv", "/dashboard/prices/"):
        client.logout()
        assert client.get(path).status_code == 302  # a login first
