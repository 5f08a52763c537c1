"""Plans on the request path (markup, margin, hot path), closemonth, and the Celery tasks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing import tasks
from billing.invoicing import period_of, previous_period_label
from billing.models import Account, Invoice, Plan, PlanModelMarkup, Price, Report, UsageRecord, UsageRollup
from billing.pricing import TokenUsage
from tenants.models import Tenant
from tests.billing.factories import snapshot, usage_row
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db

BODY = {"model": "gpt-4.1", "messages": user("hi")}


def test_the_plan_markup_is_charged_and_the_list_cost_kept(api: Api, catalog: Catalog, tenant: Tenant) -> None:
    plan = Plan.objects.create(name="Reseller", markup_percent=Decimal("25"))
    PlanModelMarkup.objects.create(plan=plan, model=catalog.models["deepseek-v3"], markup_percent=Decimal("50"))
    Account.objects.create(tenant=tenant, plan=plan)

    assert api.chat(BODY).status_code == 200
    assert api.chat({**BODY, "model": "deepseek-v3"}).status_code == 200

    gpt, deepseek = (UsageRecord.objects.get(model__name=n) for n in ("gpt-4.1", "deepseek-v3"))
    assert gpt.markup_percent == 25 and deepseek.markup_percent == 50
    assert gpt.cost == (gpt.upstream_cost * Decimal("1.25")).quantize(Decimal("1e-9"))
    assert deepseek.cost == (deepseek.upstream_cost * Decimal("1.5")).quantize(Decimal("1e-9"))
    assert gpt.upstream_cost == (gpt.input_tokens * 8 + gpt.output_tokens * 32) / Decimal(1_000_000)
    # the client is told what it is charged, markup included
    response = api.chat(BODY)
    assert Decimal(response["X-Tollway-Cost"]) == UsageRecord.objects.get(request_id=response["X-Request-ID"]).cost


def test_a_plan_change_reaches_the_next_request(api: Api, catalog: Catalog, tenant: Tenant) -> None:
    plan = Plan.objects.create(name="Team")
    Account.objects.create(tenant=tenant, plan=plan)
    assert api.chat(BODY).status_code == 200
    plan.markup_percent = Decimal("10")
    plan.save()
    assert api.chat(BODY).status_code == 200
    assert list(UsageRecord.objects.order_by("created_at").values_list("markup_percent", flat=True)) == [0, 10]


def test_warm_request_with_a_plan_still_makes_one_statement(
    api: Api, catalog: Catalog, tenant: Tenant, django_assert_num_queries
) -> None:
    plan = Plan.objects.create(name="Team", markup_percent=Decimal("20"))
    PlanModelMarkup.objects.create(plan=plan, model=catalog.models["gpt-4.1"], markup_percent=Decimal("5"))
    Account.objects.create(tenant=tenant, plan=plan)
    assert api.chat(BODY).status_code == 200
    with django_assert_num_queries(1):
        assert api.chat(BODY).status_code == 200


def test_per_request_fee_is_charged(api: Api, catalog: Catalog) -> None:
    price = Price.objects.get(model=catalog.models["gpt-4.1"])
    price.request_fee = Decimal("0.001")
    price.save()
    assert api.chat(BODY).status_code == 200
    row = UsageRecord.objects.get()
    assert row.request_fee == Decimal("0.001")
    assert row.cost == (row.input_tokens * 8 + row.output_tokens * 32) / Decimal(1_000_000) + Decimal("0.001")


def _row(tenant: Tenant, catalog: Catalog, at: datetime) -> None:
    usage_row(
        tenant=tenant,
        model=catalog.models["gpt-4.1"],
        at=at,
        price=snapshot("8", "32"),
        usage=TokenUsage(input_tokens=1_000_000, output_tokens=0),
    ).save()


def test_closemonth_shows_progress_and_is_a_no_op_the_second_time(
    tenant: Tenant, other_tenant: Tenant, catalog: Catalog
) -> None:
    usage_row(
        tenant=tenant,
        model=catalog.models["gpt-4.1"],
        at=datetime(2026, 9, 10, tzinfo=UTC),
        price=snapshot("8", "32"),
        usage=TokenUsage(input_tokens=1_000_000, output_tokens=0),
    ).save()
    out = StringIO()
    call_command("closemonth", "2026-09", "--finalize", stdout=out)
    text = out.getvalue()
    assert "[2/2]" in text and "rows/s" in text and "TW-" in text
    assert Invoice.objects.get().total_usd == Decimal("8.00")
    out = StringIO()
    call_command("closemonth", "2026-09", "--tenant", "acme", "--finalize", stdout=out)
    assert "0 drafted or refreshed, 0 finalised, 1 already final" in out.getvalue()
    assert Invoice.objects.count() == 1
    for bad, message in (("2026-9", "use YYYY-MM"), ("2999-01", "not over yet")):
        with pytest.raises(CommandError, match=message):
            call_command("closemonth", bad, stdout=StringIO())
    with pytest.raises(CommandError, match="No tenant"):
        call_command("closemonth", "2026-09", "--tenant", "nobody", stdout=StringIO())


def test_tasks_run_end_to_end_and_rerun_safely(
    tenant: Tenant, catalog: Catalog, django_capture_on_commit_callbacks
) -> None:
    # last month's usage, and this month's
    now = timezone.now()
    last_month = period_of(tz_name="UTC", label=previous_period_label(tz_name="UTC", now=now))
    _row(tenant, catalog, last_month.start + timedelta(hours=1))
    _row(tenant, catalog, now - timedelta(seconds=1))
    for _ in range(2):  # every task is idempotent
        tasks.usage_rollups()
        tasks.close_months()
        tasks.sweep_invoices()
        tasks.monthly_reports()
    assert UsageRollup.objects.filter(tenant=tenant).count() >= 1
    invoice = Invoice.objects.get()  # last month's only: this month is not over
    assert invoice.period == last_month.label and invoice.total_usd == Decimal("8.00")
    assert invoice.status == ("open" if now >= invoice.grace_until else "draft")
    assert set(Report.objects.values_list("kind", flat=True)) == {"statement", "margin", "invoices"}
    assert Report.objects.count() == 3
    # a task with more to do enqueues the rest only once the transaction commits
    with django_capture_on_commit_callbacks() as callbacks:
        tasks.enqueue(tasks.usage_rollups, after_tenant_id=0)
    assert len(callbacks) == 1  # held until the transaction commits


def test_every_beat_entry_names_a_registered_task() -> None:
    from django.conf import settings

    from config.celery import app

    app.loader.import_default_modules()
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert entry["task"] in app.tasks, name
    for task in ("billing.rollups", "billing.close_months", "billing.sweep_invoices", "billing.monthly_reports"):
        assert task in {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}


def test_statement_lists_usage_per_model_and_the_invoice(tenant: Tenant, catalog: Catalog) -> None:
    from billing.invoicing import invoice_draft
    from billing.reports import statement_build

    for name in ("gpt-4.1", "deepseek-v3"):
        usage_row(
            tenant=tenant,
            model=catalog.models[name],
            at=datetime(2026, 10, 2, tzinfo=UTC),
            price=snapshot("8", "32"),
            usage=TokenUsage(input_tokens=1_000_000, output_tokens=0),
        ).save()
    invoice_draft(tenant=tenant, period="2026-10", now=datetime(2026, 11, 2, tzinfo=UTC))
    report = statement_build(tenant=tenant, period="2026-10")
    assert report.csv.splitlines() == [
        "model,requests,input_tokens,cached_input_tokens,output_tokens,cost_usd",
        "deepseek-v3,1,1000000,0,0,8.000000000",
        "gpt-4.1,1,1000000,0,0,8.000000000",
        "TOTAL,2,2000000,0,0,16.000000000",
    ]
    assert "Invoice draft acme 2026-10: $16.00 (draft)" in report.html
    assert statement_build(tenant=tenant, period="2026-10").pk != report.pk  # rebuilt, replaced
    assert Report.objects.count() == 1
