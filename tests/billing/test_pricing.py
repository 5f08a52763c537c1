"""Money is exact: Decimal arithmetic, one rounding rule, effective-dated prices."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.ledger import UsageEntry, usage_record_create
from billing.models import Model, UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage, charge_of, cost_of, price_at
from tenants.models import Tenant
from tests.billing.factories import usage_entry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def price(pin: str, pout: str, start: datetime = T0) -> PriceSnapshot:
    return PriceSnapshot(Decimal(pin), Decimal(pout), start)


def test_cost_is_exact_where_floats_drift() -> None:
    # 0.1 + 0.2 style drift is what a float ledger gets wrong.
    cost = cost_of(TokenUsage(input_tokens=3, output_tokens=7), price("0.42", "1.68"))
    assert cost == Decimal("0.000013020")
    assert str(cost) == "0.000013020"


def test_cost_of_a_million_tokens_is_the_list_price() -> None:
    assert cost_of(TokenUsage(1_000_000, 1_000_000), price("8", "32")) == Decimal("40")


def test_rounding_is_half_up_at_nine_places() -> None:
    # 1 token at $0.0000005/Mtok is 5e-13 USD: below the ledger's precision, rounds to 0;
    # 1 token at $0.0005/Mtok is exactly 5e-10, which rounds half-up to 1e-9.
    assert cost_of(TokenUsage(1, 0), price("0.0000005", "0")) == Decimal("0E-9")
    assert cost_of(TokenUsage(1, 0), price("0.0005", "0")) == Decimal("0.000000001")


def test_price_at_picks_the_price_in_effect() -> None:
    later = datetime(2026, 6, 1, tzinfo=UTC)
    prices = [price("1", "2", later), price("8", "32", T0)]  # newest first
    assert price_at(prices, datetime(2026, 3, 1, tzinfo=UTC)) == prices[1]
    assert price_at(prices, later) == prices[0]
    assert price_at(prices, datetime(2025, 1, 1, tzinfo=UTC)) is None


@pytest.mark.django_db
def test_ledger_write_is_idempotent_per_request_id() -> None:
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    model = Model.objects.create(name="gpt-4.1")
    entry = usage_entry(
        tenant_id=tenant.pk,
        model_id=model.pk,
        request_id="req-1",
        usage=TokenUsage(100, 50),
        price=price("8", "32"),
        latency_ms=12,
    )
    assert usage_record_create(entry=entry) == (Decimal("0.002400000"), True)
    assert usage_record_create(entry=entry) == (Decimal("0.002400000"), False), "the second write is a no-op"
    assert UsageRecord.objects.count() == 1
    row = UsageRecord.objects.get()
    assert row.cost == Decimal("0.002400000")
    assert (row.input_price_per_mtok, row.output_price_per_mtok) == (Decimal("8"), Decimal("32"))
    assert row.upstream_cost == Decimal("0.002400000"), "no markup: we pay what we charge"

    # a response-cache hit billed at half price cost us nothing upstream
    import dataclasses

    hit = dataclasses.replace(entry, request_id="req-hit", price=price("4", "16"), cache_hit=True)
    assert usage_record_create(entry=hit) == (Decimal("0.001200000"), True)
    assert UsageRecord.objects.get(request_id="req-hit").upstream_cost == 0


def test_cached_tokens_are_priced_at_their_own_rates() -> None:
    snapshot = PriceSnapshot(
        Decimal("3"), Decimal("15"), T0, cached_input_per_mtok=Decimal("0.30"), cache_write_per_mtok=Decimal("3.75")
    )
    usage = TokenUsage(input_tokens=2025, output_tokens=15, cached_input_tokens=1800, cache_write_tokens=200)
    # 25 uncached at $3, 1800 read at $0.30, 200 written at $3.75, 15 out at $15
    assert cost_of(usage, snapshot) == Decimal("0.001590000")
    # the same tokens charged as if nothing were cached cost more: the LiteLLM #36083 bug
    assert cost_of(TokenUsage(2025, 15), snapshot) > cost_of(usage, snapshot)


def test_cache_prices_fall_back_to_the_input_price() -> None:
    usage = TokenUsage(input_tokens=1000, output_tokens=0, cached_input_tokens=600, cache_write_tokens=100)
    assert cost_of(usage, price("2", "8")) == cost_of(TokenUsage(1000, 0), price("2", "8")) == Decimal("0.002")


@pytest.mark.django_db
def test_ledger_row_keeps_cached_tokens_and_the_rates_applied(tenant: Tenant) -> None:
    model = Model.objects.create(name="m")
    snapshot = PriceSnapshot(Decimal("2"), Decimal("8"), T0, cached_input_per_mtok=Decimal("0.5"))
    usage_record_create(
        entry=UsageEntry(
            request_id="req-cached",
            created_at=T0,
            tenant_id=tenant.pk,
            api_key_id=None,
            model_id=model.pk,
            provider="p",
            upstream_model="m",
            usage=TokenUsage(input_tokens=100, output_tokens=10, cached_input_tokens=40),
            price=snapshot,
            usage_estimated=False,
            streamed=True,
            outcome=UsageRecord.Outcome.COMPLETED,
            latency_ms=1,
        )
    )
    row = UsageRecord.objects.get()
    assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens) == (100, 40, 0)
    assert (row.cached_input_price_per_mtok, row.cache_write_price_per_mtok) == (Decimal("0.5"), Decimal("2"))
    assert row.cost == Decimal("0.000220000")  # (60 x 2 + 40 x 0.5 + 10 x 8) / 10^6


def test_charge_applies_markup_and_fee_and_rounds_each_amount_once() -> None:
    price = PriceSnapshot(
        input_per_mtok=Decimal("3"),
        output_per_mtok=Decimal("15"),
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        request_fee=Decimal("0.0001"),
    )
    usage = TokenUsage(input_tokens=7, output_tokens=3)
    charge = charge_of(usage, price, markup_percent=Decimal("12.5"))
    list_raw = (7 * Decimal(3) + 3 * Decimal(15)) / 1_000_000 + Decimal("0.0001")  # 0.000166
    assert charge.upstream_cost == list_raw.quantize(Decimal("1e-9"))
    assert charge.cost == Decimal("0.000186750")  # 0.000166 x 1.125, exact at 9 places
    assert charge.margin == charge.cost - charge.upstream_cost
    # an int percent stays Decimal arithmetic (no float creeps in)
    assert charge_of(usage, price, markup_percent=15).cost == Decimal("0.000190900")  # type: ignore[arg-type]


@pytest.mark.django_db
def test_the_ledger_insert_is_prepared_once_per_connection_and_stays_exact() -> None:
    import dataclasses

    from django.db import connection

    tenant = Tenant.objects.create(slug="acme", name="Acme")
    model = Model.objects.create(name="gpt-4.1")
    entry = usage_entry(tenant_id=tenant.pk, model_id=model.pk)
    for n in range(4):
        assert usage_record_create(entry=dataclasses.replace(entry, request_id=f"req-{n}")) == (
            Decimal("0.000013020"),
            True,
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO%%'")
        prepared = [row[0] for row in cursor.fetchall()]
    assert len(prepared) == 1 and '"billing_usagerecord"' in prepared[0]
    assert sorted(UsageRecord.objects.values_list("cost", flat=True)) == [Decimal("0.000013020")] * 4
