"""The hot-path budget: with warm caches the ledger insert is the only database statement."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Price, UsageRecord
from proxy.route import routes
from tenants.cache import principals
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db

BODY = {"model": "gpt-4.1", "messages": user("hi")}


def test_warm_request_makes_one_statement_the_ledger_insert(
    api: Api, catalog: Catalog, django_assert_num_queries
) -> None:
    assert api.chat(BODY).status_code == 200  # warms the caches
    with django_assert_num_queries(1):
        assert api.chat(BODY).status_code == 200
    # The one statement is the ledger insert (prepared, so Django's capture shows no SQL text).
    assert UsageRecord.objects.count() == 2


def test_another_process_reads_keys_and_routes_from_redis(
    api: Api, catalog: Catalog, django_assert_num_queries
) -> None:
    assert api.chat(BODY).status_code == 200
    # A fresh worker has an empty process cache but shares Redis.
    principals.clear_local()
    routes.clear_local()
    with django_assert_num_queries(1):
        assert api.chat(BODY).status_code == 200


def test_price_change_applies_to_the_next_request(api: Api, catalog: Catalog) -> None:
    assert api.chat(BODY).status_code == 200
    Price.objects.create(
        model=catalog.models["gpt-4.1"],
        input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("2"),
        effective_from=timezone.now(),
    )
    assert api.chat(BODY).status_code == 200
    first, second = UsageRecord.objects.order_by("created_at")
    assert first.input_price_per_mtok == Decimal("8") and second.input_price_per_mtok == Decimal("1")
    # history keeps the price it was charged at
    first.refresh_from_db()
    assert first.output_price_per_mtok == Decimal("32")


def test_scheduled_price_starts_on_time_from_cache(api: Api, catalog: Catalog) -> None:
    start = timezone.now() + timedelta(milliseconds=300)
    Price.objects.create(
        model=catalog.models["gpt-4.1"],
        input_per_mtok=Decimal("4"),
        output_per_mtok=Decimal("16"),
        effective_from=start,
    )
    assert api.chat(BODY).status_code == 200  # before the start: the old price, and the route is cached
    while timezone.now() <= start:
        pass
    assert api.chat(BODY).status_code == 200
    first, second = UsageRecord.objects.order_by("created_at")
    assert (first.input_price_per_mtok, second.input_price_per_mtok) == (Decimal("8"), Decimal("4"))
