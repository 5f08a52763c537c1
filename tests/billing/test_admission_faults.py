"""Admission under Redis faults (issue 16 items 1, 2, 3, 7): the counters never drift from
Postgres, reservations survive a Redis that lost its memory, a script error is one
request's 500 and not an outage, and a dead worker's calls are billed at once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis as redis_lib
from django.core.cache import cache
from django.core.management import call_command
from redis.exceptions import ResponseError

from billing import admission, ledger, spool
from billing.admission import connection, counters, inflight, redis_path
from billing.models import Model, Reservation, StaleCounters, UsageRecord
from config.errors import InternalError
from tenants.models import Tenant
from tests.billing import factories
from tests.billing.test_admission import FakeClock, budget_ask, error, hold, set_limits
from tests.billing.test_admission import clock as clock  # the fixture, shared (re-exported by name)
from tests.conftest import Api, Catalog, free_port, user

pytestmark = pytest.mark.django_db

TEN_CENTS = Decimal("0.10")


@pytest.fixture
def model(db: None) -> Model:
    return Model.objects.get_or_create(name="m")[0]


@pytest.fixture
def dead_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``with dead_redis():`` Redis cannot be reached inside the block; after it, it answers
    again and this worker's back-off is over (as its keeper would end it)."""
    from contextlib import contextmanager

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    real = connection.client

    @contextmanager
    def down() -> Iterator[None]:
        monkeypatch.setattr(connection, "client", lambda: dead)
        try:
            yield
        finally:
            monkeypatch.setattr(connection, "client", real)
            connection.reset()

    yield down


def spend(tenant: Tenant, model: Model, taken: admission.Admission, cost: Decimal) -> None:
    """The call was answered: its ledger row is written, then its reservation settles."""
    entry = factories.usage_entry(
        tenant_id=tenant.pk, model_id=model.pk, request_id=taken.request_id, created_at=datetime.now(UTC)
    )
    ledger.usage_record_create(entry=entry)
    UsageRecord.objects.filter(request_id=taken.request_id).update(cost=cost)
    admission.settle(taken, cost=cost, tokens=10, counted=True)


def ten_cents(tenant: Tenant, request_id: str, budget: Decimal) -> admission.Ask:
    """A call that may cost ten cents, with a record the sweeper can bill it from."""
    model = Model.objects.get_or_create(name="m")[0]
    record = admission.ReservationRecord(
        tenant_id=tenant.pk,
        api_key_id=None,
        model_id=model.pk,
        provider="mock",
        upstream_model="m",
        input_price=Decimal(10_000),
        output_price=Decimal(0),
        price_from=datetime(2026, 1, 1, tzinfo=UTC),
        request_fee=Decimal(0),
        markup_percent=Decimal(0),
        input_tokens=10,
        output_tokens=0,
        streamed=False,
        api="chat",
        created_at=datetime.now(UTC),
        timezone="UTC",
    )
    return admission.Ask(
        **{**budget_ask(tenant, request_id, amount=TEN_CENTS, budget=budget).__dict__, "record": record}
    )


def admitted(tenant: Tenant, prefix: str, count: int, budget: Decimal) -> list[admission.Admission]:
    """Ask ``count`` times for ten cents; the admissions taken, until the first refusal."""
    taken = []
    for i in range(count):
        try:
            taken.append(admission.admit(ten_cents(tenant, f"{prefix}-{i}", budget)))
        except admission.QuotaExceeded:
            break
    return taken


class TestCountersNeverDrift:
    def test_spend_admitted_without_redis_is_counted_once_redis_answers(
        self, tenant: Tenant, model: Model, dead_redis: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        budget = Decimal("1.00")
        # given counters built in Redis, with ten cents spent through them
        (first,) = admitted(tenant, "before", 1, budget)
        assert first.mode == "redis"
        spend(tenant, model, first, TEN_CENTS)
        # when Redis hangs and five calls are admitted and spent through Postgres
        with dead_redis():
            during = admitted(tenant, "during", 5, budget)
            assert [a.mode for a in during] == ["postgres"] * 5
            for taken in during:
                spend(tenant, model, taken, TEN_CENTS)
        assert StaleCounters.objects.filter(tenant=tenant).exists(), "marked durably, for a worker that dies"
        # then once Redis answers, its counters know all sixty cents: four more fit, not nine
        after = admitted(tenant, "after", 9, budget)
        assert len(after) == 4 and {a.mode for a in after} == {"redis"}
        # and the sweeper drops the durable mark once it has invalidated the counters
        monkeypatch.setattr(counters, "RECONCILE_AFTER_SECONDS", 0)
        admission.sweep()
        assert not StaleCounters.objects.exists()
        assert len(admitted(tenant, "rebuilt", 9, budget)) == 0, "rebuilt again: still 60 + 40 held"

    def test_a_settle_lost_with_its_worker_is_counted_when_swept(
        self, tenant: Tenant, model: Model, clock: FakeClock, settings: Any
    ) -> None:
        budget = Decimal("0.25")
        (taken,) = admitted(tenant, "lost", 1, budget)
        # given a call whose ledger row was written, and whose worker died before settling
        entry = factories.usage_entry(
            tenant_id=tenant.pk, model_id=model.pk, request_id=taken.request_id, created_at=datetime.now(UTC)
        )
        ledger.usage_record_create(entry=entry)
        UsageRecord.objects.filter(request_id=taken.request_id).update(cost=TEN_CENTS)
        inflight.reset()  # the worker's memory went with it
        # when the sweeper finds its reservation past the deadline
        assert admission.sweep(now=clock() + settings.TOLLWAY["RESERVATION_SECONDS"] + 1) == 0, "its row stands"
        # then the counters are rebuilt with its cost: one more ten-cent call fits, not two
        assert len(admitted(tenant, "after", 3, budget)) == 1

    def test_a_settle_redis_could_not_take_is_retried_and_counted(
        self, tenant: Tenant, model: Model, dead_redis: Any
    ) -> None:
        budget = Decimal("0.35")
        held = admitted(tenant, "held", 3, budget)
        with dead_redis():
            for taken in held:
                spend(tenant, model, taken, TEN_CENTS)  # rows written; the settles are deferred
        inflight.keep_once()  # the keeper, once Redis answers
        assert admission.reserved_total(tenant.pk) == 0, "the deferred settles released their reservations"
        assert len(admitted(tenant, "after", 3, budget)) == 0, "thirty cents spent: ten more do not fit"


class TestReservationsSurviveRedisLosingItsMemory:
    def test_calls_in_flight_are_registered_again(self, tenant: Tenant) -> None:
        budget = Decimal("0.35")
        held = admitted(tenant, "held", 4, budget)
        assert len(held) == 3
        # when Redis restarts empty while three calls are in flight
        cache.clear()  # FLUSHDB
        # then their reservations are back before anything is admitted: nothing more fits
        assert admitted(tenant, "after", 1, budget) == []
        assert admission.reserved_total(tenant.pk) == 3 * TEN_CENTS
        for taken in held:
            admission.release(taken)
        assert len(admitted(tenant, "released", 4, budget)) == 3


class TestScriptErrorsAreNotOutages:
    def test_a_value_no_script_can_take_is_a_500_for_that_request_only(self, tenant: Tenant) -> None:
        ask = budget_ask(tenant, "huge", amount=TEN_CENTS, budget=Decimal(1))
        with pytest.raises(InternalError) as caught:
            admission.admit(admission.Ask(**{**ask.__dict__, "tokens": 2**62}))
        assert "huge" in caught.value.message
        assert not connection.down(), "limits stay on for everyone"
        assert admission.admit(budget_ask(tenant, "next", amount=TEN_CENTS, budget=Decimal(1))).mode == "redis"

    def test_a_script_redis_refuses_answers_500_and_limits_hold(
        self, api: Api, key: Any, catalog: Catalog, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, settings: Any
    ) -> None:
        settings.TOLLWAY = {**settings.TOLLWAY, "LIMITS_ON_REDIS_ERROR": "closed"}
        set_limits(key.api_key, rpm_limit=2)
        body = {"model": "gpt-4.1", "messages": user("hi")}
        real = redis_path.admit

        def broken(*args: Any) -> Any:
            raise ResponseError("ERR value is not an integer or out of range script: admit")

        monkeypatch.setattr(redis_path, "admit", broken)
        err = error(api.chat(body), 500)
        assert (err["type"], err["code"]) == ("server_error", "internal_error")
        assert "request" in err["message"]
        monkeypatch.setattr(redis_path, "admit", real)
        # the next requests go through Redis: not refused with 503, and the limit holds
        assert [api.chat(body).status_code for _ in range(3)] == [200, 200, 429]

    def test_a_timeout_is_an_outage(self, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
        def hung(*args: Any) -> Any:
            raise redis_lib.exceptions.TimeoutError("Timeout reading from socket")

        monkeypatch.setattr(redis_path, "admit", hung)
        taken = admission.admit(budget_ask(tenant, "hung", amount=TEN_CENTS, budget=Decimal(1)))
        assert taken.mode == "postgres", "budgets hold through Postgres while Redis is down"
        assert Reservation.objects.filter(request_id="hung").exists()


class TestDeadWorkers:
    @pytest.fixture
    def dead_worker(self, monkeypatch: pytest.MonkeyPatch) -> str:
        """This process's calls, recorded as a worker that has exited."""
        gone = subprocess.Popen(["true"])
        gone.wait()
        worker = spool.worker_id(gone.pid)
        monkeypatch.setattr(inflight, "worker", lambda: worker)
        return worker

    def test_the_reaper_bills_a_dead_worker_s_calls_at_once(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock, dead_worker: str
    ) -> None:
        set_limits(tenant, monthly_budget_usd=Decimal("1.00"))
        hold(api)  # a stream in flight when its worker died
        assert admission.reserved_total(tenant.pk) > 0
        call_command("reapworker", dead_worker)
        row = UsageRecord.objects.get()
        assert row.outcome == UsageRecord.Outcome.RESERVATION_EXPIRED and row.usage_estimated
        assert admission.reserved_total(tenant.pk) == 0
        assert admission.sweep(now=clock() + 10_000) == 0, "billed once"

    def test_the_reaper_leaves_a_live_worker_alone(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock
    ) -> None:
        from django.core.management.base import CommandError

        set_limits(tenant, monthly_budget_usd=Decimal("1.00"))
        hold(api)
        with pytest.raises(CommandError, match="still running"):
            call_command("reapworker", spool.worker_id())
        assert not UsageRecord.objects.exists()


def test_a_keeper_that_ended_is_started_again_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a keeper that has ended (its liveness, asked at most once a second, last seen long ago)
    import os
    import threading

    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    monkeypatch.setattr(inflight, "_keeper", ended)
    monkeypatch.setattr(inflight, "_keeper_pid", os.getpid())
    monkeypatch.setattr(inflight, "_keeper_started", inflight._keeper_epoch)
    monkeypatch.setattr(inflight, "_keeper_seen_alive", 0.0)
    # When the next admission asks for it, a new keeper runs
    inflight.ensure_keeper()
    started = inflight._keeper
    assert started is not None and started is not ended and started.is_alive()
    inflight.reset()  # and the test's keeper stops with the test
