"""The admin: invoice filters, finalise / void actions, PDF and CSV downloads; the price book."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from billing.invoicing import invoice_draft
from billing.models import Invoice, Model, Price, Report
from billing.pricing import TokenUsage
from billing.reports import invoices_report_build, margin_report_build
from tenants.models import Tenant
from tests.billing.factories import snapshot, usage_row

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


@pytest.fixture
def drafts(tenant: Tenant, other_tenant: Tenant) -> list[Invoice]:
    model = Model.objects.create(name="gpt-4.1")
    made = []
    for t in (tenant, other_tenant):
        usage_row(
            tenant=t,
            model=model,
            at=datetime(2026, 10, 3, tzinfo=UTC),
            price=snapshot("8", "32"),
            usage=TokenUsage(input_tokens=1_000_000, output_tokens=0),
        ).save()
        invoice = invoice_draft(tenant=t, period="2026-10", now=datetime(2026, 11, 2, tzinfo=UTC))
        assert invoice is not None
        made.append(invoice)
    return made


def act(admin_client: Client, action: str, invoices: list[Invoice], follow: bool = True) -> object:
    return admin_client.post(
        reverse("admin:billing_invoice_changelist"),
        {"action": action, "_selected_action": [i.pk for i in invoices]},
        follow=follow,
    )


def test_finalise_filter_download_and_void_from_the_admin(admin_client: Client, drafts: list[Invoice]) -> None:
    # finalise both drafts
    response = act(admin_client, "finalize", drafts)
    assert "Finalised 2 invoice(s)." in response.content.decode()  # type: ignore[attr-defined]
    numbers = sorted(str(n) for n in Invoice.objects.values_list("number", flat=True))
    assert numbers == ["TW-2026-000001", "TW-2026-000002"]
    # finalising again is refused, clearly
    again = act(admin_client, "finalize", drafts[:1]).content.decode()  # type: ignore[attr-defined]
    assert "is already finalised" in again

    # list filters
    changelist = reverse("admin:billing_invoice_changelist")
    assert admin_client.get(changelist, {"status": "open", "period": "2026-10"}).status_code == 200
    assert admin_client.get(changelist, {"status__exact": "draft"}).status_code == 200

    # downloads: one PDF, a zip of PDFs, per-invoice CSVs, the month's CSV
    one = act(admin_client, "download_pdfs", drafts[:1], follow=False)
    assert one["Content-Type"] == "application/pdf" and one.content.startswith(b"%PDF")  # type: ignore[index, attr-defined]
    both = act(admin_client, "download_pdfs", drafts, follow=False)
    names = zipfile.ZipFile(io.BytesIO(both.content)).namelist()  # type: ignore[attr-defined]
    assert sorted(names) == ["TW-2026-000001.pdf", "TW-2026-000002.pdf"]
    month = act(admin_client, "download_month_csv", drafts, follow=False)
    assert month["Content-Disposition"] == 'attachment; filename="invoices-2026-10.csv"'  # type: ignore[index]
    assert len(month.content.decode().splitlines()) == 3  # type: ignore[attr-defined]
    pdf = admin_client.get(reverse("admin:billing_invoice_pdf", args=[drafts[0].pk]))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    csv = admin_client.get(reverse("admin:billing_invoice_csv", args=[drafts[0].pk]))
    assert csv.status_code == 200 and b"TW-2026-00000" in csv.content
    page = admin_client.get(reverse("admin:billing_invoice_change", args=[drafts[0].pk]))
    assert page.status_code == 200 and b"PDF" in page.content

    # void and reissue
    act(admin_client, "void_and_reissue", drafts[:1])
    assert Invoice.objects.filter(status="void").count() == 1
    assert Invoice.objects.get(replaces=drafts[0]).status == "draft"


def test_reports_are_downloadable(admin_client: Client, drafts: list[Invoice]) -> None:
    margin = margin_report_build(period="2026-10")
    assert margin.csv.splitlines()[1:] == [
        "gpt-4.1,mock,2,16.000000000,16.000000000,0.000000000,0.00",
        "TOTAL,,2,16.000000000,16.000000000,0.000000000,0.00",
    ]
    invoices_report_build(period="2026-10")
    for report in Report.objects.all():
        for fmt in ("csv", "html"):
            response = admin_client.get(reverse("admin:billing_report_file", args=[report.pk, fmt]))
            assert response.status_code == 200
    assert admin_client.get(reverse("admin:billing_report_changelist")).status_code == 200


def test_reports_generate_now_from_the_reports_page(
    admin_client: Client, drafts: list[Invoice], monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks
) -> None:
    from config.celery import app

    # the Reports page offers last month and a "Generate now" button
    page = admin_client.get(reverse("admin:billing_report_changelist")).content.decode()
    assert "Generate now" in page and 'name="period"' in page
    generate = reverse("admin:billing_report_generate")

    # a malformed month, or one not over yet, is refused and nothing is queued
    with django_capture_on_commit_callbacks() as queued:
        bad = admin_client.post(generate, {"period": "2026-13"}, follow=True).content.decode()
        early = admin_client.post(generate, {"period": "2999-01"}, follow=True).content.decode()
    assert "is not a month" in bad and "is not over yet" in early and queued == []

    # when finance generates October's reports (run here as the worker would run the task)
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    with django_capture_on_commit_callbacks(execute=True) as queued:
        done = admin_client.post(generate, {"period": "2026-10"}, follow=True).content.decode()

    # then the task was queued once the request committed, and the reports are there
    assert len(queued) == 1 and "The reports for 2026-10 are being generated" in done
    made = sorted(Report.objects.filter(period="2026-10").values_list("kind", "tenant__slug"))
    assert made == [("invoices", None), ("margin", None), ("statement", "acme"), ("statement", "globex")]


def test_price_book_rejects_an_overlapping_start_and_shows_upcoming_and_past(admin_client: Client) -> None:
    model = Model.objects.create(name="gpt-4.1")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    Price.objects.create(model=model, input_per_mtok=Decimal(8), output_per_mtok=Decimal(32), effective_from=start)
    Price.objects.create(
        model=model,
        input_per_mtok=Decimal(6),
        output_per_mtok=Decimal(24),
        effective_from=start + timedelta(days=30),
    )
    Price.objects.create(
        model=model,
        input_per_mtok=Decimal(5),
        output_per_mtok=Decimal(20),
        effective_from=datetime(2099, 1, 1, tzinfo=UTC),
    )
    response = admin_client.post(
        reverse("admin:billing_price_add"),
        {
            "model": model.pk,
            "input_per_mtok": "1",
            "output_per_mtok": "2",
            "request_fee": "0",
            "effective_from_0": "2026-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert response.status_code == 200  # the form again, with the error
    assert "prices may not overlap" in response.content.decode()
    assert Price.objects.count() == 3
    listing = admin_client.get(reverse("admin:billing_price_changelist")).content.decode()
    for state in ("upcoming", "current", "past"):
        assert f'<td class="field-state">{state}</td>' in listing
    upcoming = admin_client.get(reverse("admin:billing_price_changelist"), {"when": "upcoming"}).content.decode()
    assert upcoming.count('<td class="field-state">') == 1


def test_the_credit_ledger_is_append_only(admin_client: Client, tenant: Tenant) -> None:
    from billing.models import CreditEntry

    added = admin_client.post(
        reverse("admin:billing_creditentry_add"),
        {"tenant": tenant.pk, "kind": "topup", "amount_usd": "25", "note": "wire"},
    )
    assert added.status_code == 302
    entry = CreditEntry.objects.get()
    assert entry.created_by == "root"
    assert admin_client.get(reverse("admin:billing_creditentry_delete", args=[entry.pk])).status_code == 403
    admin_client.post(reverse("admin:billing_creditentry_change", args=[entry.pk]), {"amount_usd": "2500"})
    entry.refresh_from_db()
    assert entry.amount_usd == Decimal("25")
