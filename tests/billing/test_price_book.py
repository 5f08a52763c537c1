"""The price book's rule: a price calls were billed at is read-only, in the admin and
everywhere else; the way to change what a model costs is to schedule a new price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing import price_book
from billing.models import Model, Price
from billing.pricing import TokenUsage
from tenants.models import Tenant
from tests.billing.factories import snapshot, usage_row

pytestmark = pytest.mark.django_db

START = datetime(2026, 1, 1, tzinfo=UTC)


class FormFields(HTMLParser):
    """What a browser would submit from a page's main form: enabled fields only."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and "disabled" not in a:
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self.data[name] = a.get("value") or "on"
            elif a.get("type") not in ("submit", "button"):
                self.data[name] = a.get("value") or ""
        elif tag == "select" and name and "disabled" not in a:
            self._select = name
            self.data.setdefault(name, "")
        elif tag == "option" and self._select and "selected" in a:
            self.data[self._select] = a.get("value") or ""
        elif tag == "textarea" and name and "disabled" not in a:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea] += data.lstrip("\n")


def form_of(html: str) -> dict[str, str]:
    parser = FormFields()
    parser.feed(html)
    return parser.data


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


@pytest.fixture
def model(tenant: Tenant) -> Model:
    """gpt-4.1 at $8 / $32 since January, with one call billed at it in February."""
    model = Model.objects.create(name="gpt-4.1")
    Price.objects.create(model=model, input_per_mtok=Decimal(8), output_per_mtok=Decimal(32), effective_from=START)
    usage_row(
        tenant=tenant,
        model=model,
        at=START + timedelta(days=40),
        price=snapshot("8", "32"),
        usage=TokenUsage(input_tokens=1_000_000, output_tokens=0),
    ).save()
    return model


def test_changed_spans_find_where_the_applying_price_differs() -> None:
    a = price_book.Entry(START, (Decimal(8), Decimal(32), None, None, Decimal(0)))
    b = price_book.Entry(START + timedelta(days=30), (Decimal(6), Decimal(24), None, None, Decimal(0)))
    # scheduling b changes only what applies from b's start on
    assert price_book.changed_spans([a], [a, b]) == [(b.effective_from, None)]
    # moving a back changes only the span before it
    earlier = price_book.Entry(START - timedelta(days=9), a.rates)
    assert price_book.changed_spans([a], [earlier]) == [(earlier.effective_from, START)]
    # the same amounts written differently (8 vs 8.000000) change nothing
    same = price_book.Entry(START, (Decimal("8.000000"), Decimal("32.0"), None, None, Decimal("0.00")))
    assert price_book.changed_spans([a], [same]) == []


def test_a_billed_price_cannot_be_edited_moved_or_deleted_from_the_shell(model: Model) -> None:
    price = model.prices.get()
    price.input_per_mtok = Decimal(1)
    with pytest.raises(ValidationError, match="schedule a new price"):
        price.save()
    price.refresh_from_db()
    price.effective_from = START + timedelta(days=50)  # would leave the February call unpriced
    with pytest.raises(ValidationError, match="calls already billed"):
        price.save()
    with pytest.raises(ValidationError), transaction.atomic():  # a delete's own atomic has no savepoint
        Price.objects.filter(pk=price.pk).delete()
    # a price that starts before the billed call, in between, also changes what it cost
    with pytest.raises(ValidationError):
        Price.objects.create(
            model=model, input_per_mtok=Decimal(1), output_per_mtok=Decimal(1), effective_from=START + timedelta(days=5)
        )
    assert model.prices.get().input_per_mtok == Decimal(8)


def test_what_billed_calls_never_saw_may_change(model: Model) -> None:
    # a new price from now on: the way to change the price
    Price.objects.create(model=model, input_per_mtok=Decimal(6), output_per_mtok=Decimal(24))
    # an upcoming price can still be edited, and deleted
    upcoming = Price.objects.create(
        model=model,
        input_per_mtok=Decimal(5),
        output_per_mtok=Decimal(20),
        effective_from=datetime(2099, 1, 1, tzinfo=UTC),
    )
    upcoming.input_per_mtok = Decimal(4)
    upcoming.save()
    with transaction.atomic():
        upcoming.delete()
    # the first price may reach further back (seeddemo --history does): no call before it
    first = model.prices.order_by("effective_from").first()
    assert first is not None
    first.effective_from = START - timedelta(days=60)
    first.save()


def test_the_admin_shows_a_billed_price_read_only_and_refuses_to_rewrite_it(admin_client: Client, model: Model) -> None:
    page = reverse("admin:billing_model_change", args=[model.pk])
    html = admin_client.get(page).content.decode()
    assert "current, billed (read-only)" in html
    assert "Schedule a new price" in html
    data = form_of(html)
    # the billed row's fields are disabled, so a browser sends none of them
    assert "prices-0-input_per_mtok" not in data and "prices-0-DELETE" not in data
    # a forged post that edits it anyway changes nothing
    response = admin_client.post(page, {**data, "prices-0-input_per_mtok": "1", "prices-0-DELETE": "on"})
    assert response.status_code == 302
    assert model.prices.get().input_per_mtok == Decimal(8)

    # a new row that starts before the billed call is refused, with the way out
    back = {
        **data,
        "prices-TOTAL_FORMS": "2",
        "prices-1-effective_from_0": "2026-01-15",
        "prices-1-effective_from_1": "00:00:00",
        "prices-1-input_per_mtok": "1",
        "prices-1-output_per_mtok": "2",
        "prices-1-request_fee": "0",
        "prices-1-batch_factor": "0.5",
    }
    response = admin_client.post(page, back)
    assert response.status_code == 200
    assert "schedule a new price" in response.content.decode()
    assert model.prices.count() == 1

    # an empty start means now: the new price is scheduled, the old one stays as history
    response = admin_client.post(page, {**back, "prices-1-effective_from_0": "", "prices-1-effective_from_1": ""})
    assert response.status_code == 302
    newest = model.prices.order_by("-effective_from").first()
    assert newest is not None and newest.input_per_mtok == Decimal(1)
    assert abs(newest.effective_from - timezone.now()) < timedelta(minutes=5)
    assert model.prices.order_by("effective_from").first().input_per_mtok == Decimal(8)  # type: ignore[union-attr]


def test_the_price_page_of_a_billed_price_has_no_save_or_delete(admin_client: Client, model: Model) -> None:
    price = model.prices.get()
    html = admin_client.get(reverse("admin:billing_price_change", args=[price.pk])).content.decode()
    assert 'name="input_per_mtok"' not in html  # shown as text, not as an input
    assert admin_client.get(reverse("admin:billing_price_delete", args=[price.pk])).status_code == 403
    # the schedule link opens the add page with the model filled in, and it saves from now
    add = reverse("admin:billing_price_add")
    assert f'value="{model.pk}" selected' in admin_client.get(add, {"model": model.pk}).content.decode()
    response = admin_client.post(
        add, {"model": model.pk, "input_per_mtok": "6", "output_per_mtok": "24", "request_fee": "0"}
    )
    assert response.status_code == 302
    assert model.prices.count() == 2
