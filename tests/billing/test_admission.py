"""Rate limits, budgets and prepaid credit: reserve at admission, settle to the actual cost."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis as redis_lib
from django.core.cache import cache
from django.test import Client

from billing import admission, ledger
from billing.admission import QuotaExceeded, connection, counters, keys
from billing.models import Account, CreditEntry, Model, Reservation, UsageRecord
from billing.pricing import TokenUsage, cost_of
from proxy import tokens
from tenants import services
from tenants.models import ApiKey, Tenant
from tests.billing import factories
from tests.conftest import Api, Catalog, free_port, sse_events, user

pytestmark = pytest.mark.django_db

MESSAGES = user("Tell me about budgets.")
BIG = {"model": "gpt-4.1", "messages": MESSAGES, "max_tokens": 1000}


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    # 10 s into a minute, so a test never straddles a window unless it moves the clock.
    import time

    fake = FakeClock((int(time.time()) // 60) * 60 + 10.0)
    monkeypatch.setattr(admission, "clock", fake)
    return fake


def reservation_for(body: dict[str, Any]) -> Decimal:
    """What admission reserves for ``body`` on gpt-4.1 ($8 / $32): independent arithmetic."""
    prompt = max(tokens.prompt_tokens(body["messages"]), len(json.dumps(body["messages"])) // 3)
    return cost_of(TokenUsage(prompt, body["max_tokens"]), _price())


def _price() -> Any:
    from billing.pricing import PriceSnapshot

    return PriceSnapshot(Decimal(8), Decimal(32), effective_from=None)  # type: ignore[arg-type]


def hold(api: Api, body: dict[str, Any] = BIG) -> Any:
    """Start a streamed call and leave it open: its reservation stays held."""
    response = api.chat({**body, "stream": True})
    assert response.status_code == 200, response.content
    return response


def finish(response: Any) -> list[Any]:
    return sse_events(response)


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()["error"]


def set_limits(obj: Tenant | ApiKey, **limits: Any) -> None:
    for name, value in limits.items():
        setattr(obj, name, value)
    obj.save()


class TestRateLimits:
    def test_rpm_admits_exactly_n_per_minute(self, api: Api, key: Any, catalog: Catalog, clock: FakeClock) -> None:
        set_limits(key.api_key, rpm_limit=3)
        body = {"model": "gpt-4.1", "messages": user("hi")}
        seen = [api.chat(body) for _ in range(3)]
        assert [r.status_code for r in seen] == [200, 200, 200]
        assert [r["x-ratelimit-remaining-requests"] for r in seen] == ["2", "1", "0"]
        assert seen[0]["x-ratelimit-limit-requests"] == "3"
        assert seen[0]["x-ratelimit-reset-requests"] == "50s"

        refused = api.chat(body)
        err = error(refused, 429)
        assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
        assert refused["Retry-After"] == "50"
        assert UsageRecord.objects.count() == 3, "a refused call writes nothing"

        clock.now += 60
        assert api.chat(body).status_code == 200

    def test_tenant_rpm_bounds_all_its_keys(
        self, client: Client, tenant: Tenant, make_key: Any, catalog: Catalog, clock: FakeClock
    ) -> None:
        set_limits(tenant, rpm_limit=2)
        first, second = Api(client, make_key(tenant).plaintext), Api(client, make_key(tenant).plaintext)
        body = {"model": "gpt-4.1", "messages": user("hi")}
        assert first.chat(body).status_code == 200
        assert second.chat(body).status_code == 200
        assert "tenant" in error(first.chat(body), 429)["message"]

    def test_tpm_reserves_the_estimate_and_settles_to_actual(
        self, api: Api, key: Any, catalog: Catalog, clock: FakeClock
    ) -> None:
        set_limits(key.api_key, tpm_limit=5000)
        body = {"model": "gpt-4.1", "messages": MESSAGES, "max_tokens": 1000}
        estimate = max(tokens.prompt_tokens(MESSAGES), len(json.dumps(MESSAGES)) // 3) + 1000
        first = api.chat(body)
        assert first["x-ratelimit-remaining-tokens"] == str(5000 - estimate)
        row = UsageRecord.objects.get()
        actual = row.input_tokens + row.output_tokens
        assert actual < estimate
        second = api.chat(body)
        # the first call's reservation was corrected to what it used
        assert second["x-ratelimit-remaining-tokens"] == str(5000 - actual - estimate)

    def test_tpm_refuses_a_request_that_does_not_fit(
        self, api: Api, key: Any, catalog: Catalog, clock: FakeClock
    ) -> None:
        set_limits(key.api_key, tpm_limit=500)
        err = error(api.chat({"model": "gpt-4.1", "messages": MESSAGES, "max_tokens": 1000}), 429)
        assert err["type"] == "tokens"
        assert api.chat({"model": "gpt-4.1", "messages": MESSAGES, "max_tokens": 100}).status_code == 200

    def test_concurrent_requests(self, api: Api, key: Any, catalog: Catalog, clock: FakeClock) -> None:
        set_limits(key.api_key, max_concurrent=1)
        open_stream = hold(api)
        refused = api.chat({"model": "gpt-4.1", "messages": user("hi")})
        assert "concurrent" in error(refused, 429)["message"]
        assert refused["Retry-After"] == "1"
        finish(open_stream)
        assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200


class TestBudgets:
    def test_tenant_budget_admits_only_what_fits(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock
    ) -> None:
        amount = reservation_for(BIG)
        set_limits(tenant, monthly_budget_usd=Decimal("0.10"))
        fits = int(Decimal("0.10") // amount)
        assert fits == 3
        held = [hold(api) for _ in range(fits)]
        refused = api.chat(BIG)
        err = error(refused, 429)
        assert (err["type"], err["code"]) == ("insufficient_quota", "insufficient_quota")
        assert refused["x-should-retry"] == "false"
        assert "Retry-After" not in refused
        # settling gives back what the calls did not use
        for response in held:
            finish(response)
        spent = sum(r.cost for r in UsageRecord.objects.all())
        assert spent < Decimal("0.01")
        assert api.chat(BIG).status_code == 200

    def test_key_budget_nests_inside_the_tenants(
        self, client: Client, tenant: Tenant, make_key: Any, catalog: Catalog, clock: FakeClock
    ) -> None:
        set_limits(tenant, monthly_budget_usd=Decimal("1.00"))
        tight = make_key(tenant, monthly_budget_usd=Decimal("0.05"))
        roomy = Api(client, make_key(tenant).plaintext)
        held = hold(Api(client, tight.plaintext))
        assert "key's monthly budget" in error(Api(client, tight.plaintext).chat(BIG), 429)["message"]
        assert roomy.chat(BIG).status_code == 200
        finish(held)

    def test_prepaid_tenant_spends_only_its_balance(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock, django_capture_on_commit_callbacks: Any
    ) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            Account.objects.create(tenant=tenant, payment=Account.Payment.PREPAID)
        assert "prepaid credit" in error(api.chat(BIG), 429)["message"], "no credit, no calls"
        with django_capture_on_commit_callbacks(execute=True):
            CreditEntry.objects.create(tenant=tenant, amount_usd=Decimal("0.05"), note="first top-up")
        held = hold(api)
        assert error(api.chat(BIG), 429)["code"] == "insufficient_quota"
        with django_capture_on_commit_callbacks(execute=True):
            CreditEntry.objects.create(tenant=tenant, amount_usd=Decimal("1.00"))
        assert api.chat(BIG).status_code == 200
        finish(held)
        body = api.get("/v1/tenant")
        assert body.status_code == 403  # an inference key cannot read tenant settings

    def test_failed_call_releases_its_reservation(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock
    ) -> None:
        from tests.conftest import Upstream

        dead = Upstream(base_url=f"http://127.0.0.1:{free_port()}/v1", port=0)
        catalog.add_http_model("broken", dead, "gpt-4.1")
        set_limits(tenant, monthly_budget_usd=Decimal("0.05"))
        for _ in range(3):  # would exhaust the budget if the reservations leaked
            assert api.chat({**BIG, "model": "broken"}).status_code == 502
        assert admission.reserved_total(tenant.pk) == 0
        assert not UsageRecord.objects.exists()
        assert api.chat(BIG).status_code == 200

    def test_max_tokens_above_the_models_cap(self, api: Api, catalog: Catalog) -> None:
        Model.objects.filter(name="gpt-4.1").update(max_output_tokens=500)
        from proxy.route import catalog_invalidate

        catalog_invalidate()
        err = error(api.chat(BIG), 400)
        assert err["param"] == "max_tokens" and "500" in err["message"]

    def test_no_max_tokens_reserves_the_models_cap(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock
    ) -> None:
        Model.objects.filter(name="gpt-4.1").update(max_output_tokens=2000)
        from proxy.route import catalog_invalidate

        catalog_invalidate()
        set_limits(tenant, monthly_budget_usd=Decimal("0.06"))  # one 2000-token reservation is $0.064
        assert error(api.chat({"model": "gpt-4.1", "messages": MESSAGES}), 429)["code"] == "insufficient_quota"
        assert api.chat({**BIG, "max_tokens": 100}).status_code == 200


class TestSettleAndSweep:
    def test_settle_is_idempotent(self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock) -> None:
        set_limits(tenant, monthly_budget_usd=Decimal("1.00"))
        response = hold(api)
        assert admission.reserved_total(tenant.pk) == admission.from_micro(admission.to_micro(reservation_for(BIG)))
        finish(response)
        row = UsageRecord.objects.get()
        month, _, _ = admission.month_bounds("UTC", clock())
        counted = connection.client().get(keys.spent(tenant.pk, "t", month))
        # settling the same request again changes nothing
        again = admission.Admission(row.request_id, "redis", tenant.pk, row.api_key_id, month)
        admission.settle(again, cost=row.cost, tokens=10, counted=False)
        assert connection.client().get(keys.spent(tenant.pk, "t", month)) == counted
        assert admission.reserved_total(tenant.pk) == 0
        assert int(counted) == admission.to_micro(row.cost)

    def test_sweeper_bills_a_lost_reservation_from_its_estimate(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock, settings: Any
    ) -> None:
        set_limits(tenant, monthly_budget_usd=Decimal("1.00"))
        response = hold(api)  # the worker "dies": the stream is never read
        assert admission.sweep() == 0, "not before its deadline"
        assert admission.sweep(now=clock() + settings.TOLLWAY["RESERVATION_SECONDS"] + 1) == 1
        row = UsageRecord.objects.get()
        assert row.outcome == UsageRecord.Outcome.RESERVATION_EXPIRED and row.usage_estimated
        assert row.cost == reservation_for(BIG)
        assert admission.reserved_total(tenant.pk) == 0
        assert admission.sweep(now=clock() + 10_000) == 0, "billed once"
        # if the worker was only slow, its own row cannot bill the call again
        finish(response)
        assert UsageRecord.objects.count() == 1

    def test_flushed_redis_is_rebuilt_from_the_ledger(
        self, api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock
    ) -> None:
        set_limits(tenant, monthly_budget_usd=Decimal("0.10"))
        assert api.chat(BIG).status_code == 200  # counters exist now
        # history Redis has never seen: $0.08 of spend already in the ledger
        row = UsageRecord.objects.get()
        UsageRecord.objects.create(
            **{
                f.name: getattr(row, f.name)
                for f in UsageRecord._meta.concrete_fields
                if f.name not in ("id", "request_id", "cost")
            },
            request_id="imported",
            cost=Decimal("0.08"),
        )
        cache.clear()  # FLUSHDB: every counter is gone
        assert error(api.chat(BIG), 429)["code"] == "insufficient_quota", "rebuilt: $0.08 spent + $0.032 > $0.10"
        set_limits(tenant, monthly_budget_usd=Decimal("0.20"))
        assert api.chat(BIG).status_code == 200


class TestRedisDown:
    @pytest.fixture
    def redis_down(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        dead = redis_lib.Redis(
            host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
        )
        monkeypatch.setattr(connection, "client", lambda: dead)

    def test_rate_limits_fail_open_and_budgets_hold_in_postgres(
        self, redis_down: None, api: Api, key: Any, tenant: Tenant, catalog: Catalog, clock: FakeClock
    ) -> None:
        set_limits(key.api_key, rpm_limit=1)
        for _ in range(3):
            assert api.chat({"model": "gpt-4.1", "messages": user("hi")}).status_code == 200
        set_limits(tenant, monthly_budget_usd=Decimal("0.10"))
        held = [hold(api) for _ in range(3)]  # three $0.032 reservations fit in $0.10
        assert Reservation.objects.count() == 3
        assert error(api.chat(BIG), 429)["code"] == "insufficient_quota"
        for response in held:
            finish(response)
        assert not Reservation.objects.exists()
        assert api.chat(BIG).status_code == 200

    def test_closed_policy_refuses_with_503(self, redis_down: None, api: Api, catalog: Catalog, settings: Any) -> None:
        settings.TOLLWAY = {**settings.TOLLWAY, "LIMITS_ON_REDIS_ERROR": "closed"}
        err = error(api.chat({"model": "gpt-4.1", "messages": user("hi")}), 503)
        assert err["code"] == "limits_unavailable"


class TestVisibilityAndValidation:
    def test_tenant_sees_spend_reservations_and_budget(
        self, client: Client, tenant: Tenant, make_key: Any, catalog: Catalog, clock: FakeClock
    ) -> None:
        set_limits(tenant, monthly_budget_usd=Decimal("5.00"))
        api = Api(client, make_key(tenant, scopes=["inference", "manage"]).plaintext)
        held = hold(api)
        money = api.get("/v1/tenant").json()["billing"]
        reserved = admission.from_micro(admission.to_micro(reservation_for(BIG)))
        assert Decimal(money["reserved_usd"]) == reserved
        assert Decimal(money["budget_remaining_usd"]) == Decimal("5.00") - reserved
        finish(held)
        money = api.get("/v1/tenant").json()["billing"]
        assert Decimal(money["spend_usd"]) == UsageRecord.objects.get().cost
        assert Decimal(money["reserved_usd"]) == 0

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("rpm_limit", 0),
            ("rpm_limit", 10**9),
            ("tpm_limit", -1),
            ("max_concurrent", 10**7),
            ("monthly_budget_usd", "1e12"),
        ],
    )
    def test_absurd_limits_are_refused(
        self, client: Client, tenant: Tenant, make_key: Any, field: str, value: Any
    ) -> None:
        manager = make_key(tenant, scopes=["manage"])
        response = client.post(
            "/v1/keys",
            data={field: value},
            content_type="application/json",
            headers={"Authorization": f"Bearer {manager.plaintext}"},
        )
        assert error(response, 400)["param"] == field

    def test_absurd_tenant_limits_are_refused_by_the_model(self, tenant: Tenant) -> None:
        from django.core.exceptions import ValidationError

        with pytest.raises(ValidationError) as caught:
            services.tenant_update(tenant=tenant, rpm_limit=10**9)
        assert "rpm_limit" in caught.value.message_dict


def test_topup_command_makes_a_prepaid_tenant_able_to_spend(
    api: Api, tenant: Tenant, catalog: Catalog, clock: FakeClock
) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("topup", "acme", "2.50", "--prepaid", "--note", "wire 42", stdout=out)
    assert "Balance: $2.5" in out.getvalue()
    assert Account.objects.get(tenant=tenant).prepaid
    entry = CreditEntry.objects.get()
    assert (entry.amount_usd, entry.kind, entry.note) == (Decimal("2.50"), "topup", "wire 42")
    assert api.chat(BIG).status_code == 200
    with pytest.raises(CommandError):
        call_command("topup", "acme", "abc")
    with pytest.raises(CommandError):
        call_command("topup", "acme", "0")


def budget_ask(tenant: Tenant, request_id: str, *, amount: Decimal, budget: Decimal) -> admission.Ask:
    """What a request asks of admission with only a tenant budget set."""
    return admission.Ask(
        request_id=request_id,
        tenant_id=tenant.pk,
        api_key_id=None,
        tenant_limits=admission.Limits(),
        key_limits=admission.Limits(),
        tokens=10,
        amount=amount,
        tenant_budget=budget,
        key_budget=None,
        timezone="UTC",
        record={},
    )


@pytest.mark.django_db
def test_a_request_that_takes_the_rebuild_lock_after_a_rebuild_ended_does_not_rebuild_again(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a request that found the counters missing, and took the lock only once the
    # rebuild another request did had ended (the counters are back)
    rebuilds: list[int] = []

    def rebuild(*args: Any) -> bool:
        rebuilds.append(1)
        return True

    monkeypatch.setattr(counters, "rebuild", rebuild)
    cache.clear()
    ask = budget_ask(tenant, "late", amount=Decimal("0.005"), budget=Decimal("0.99"))
    now = datetime.now(UTC)

    # When it holds the lock
    result = counters.admit_after_rebuild(ask, "2026-11", now, now, False, lambda: ["ok", "1", "1", "1", "1", "0"])

    # Then it is admitted without summing the ledger a second time
    assert result[0] == "ok"
    assert rebuilds == []


@pytest.mark.django_db(transaction=True)  # the callers are threads, each on its own connection
def test_after_a_flush_one_request_rebuilds_while_the_others_wait(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from django.db import connection

    from billing.admission import Ask

    model = Model.objects.create(name="m")
    row = factories.usage_entry(tenant_id=tenant.pk, model_id=model.pk, created_at=datetime.now(UTC))
    ledger.usage_record_create(entry=row)
    UsageRecord.objects.filter(tenant=tenant).update(cost=Decimal("0.95"))  # spend Redis has not seen
    rebuilds: list[int] = []
    real = counters.rebuild

    def slow_rebuild(*args: Any) -> bool:
        rebuilds.append(1)
        time.sleep(0.3)  # a month's SUM over a big ledger takes a while: everyone piles up
        return real(*args)

    monkeypatch.setattr(counters, "rebuild", slow_rebuild)

    def ask(request_id: str) -> Ask:
        return budget_ask(tenant, request_id, amount=Decimal("0.005"), budget=Decimal("0.99"))

    cache.clear()  # FLUSHDB
    answers: list[Any] = [None] * 8
    start = threading.Barrier(8)

    def call(i: int) -> None:
        try:
            start.wait()
            answers[i] = admission.admit(ask(f"herd-{i}"))
        except Exception as exc:
            answers[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(rebuilds) == 1, "one SUM over the ledger, not one per request"
    assert [a.mode for a in answers] == ["redis"] * 8
    # Rebuilt from the ledger: $0.95 spent, and 8 x $0.005 held, fill the $0.99 budget.
    with pytest.raises(QuotaExceeded):
        admission.admit(ask("herd-over"))


@pytest.mark.django_db(transaction=True)
def test_waiting_for_a_rebuild_never_starves_the_rebuilder_of_a_connection(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """Requests mid-flight hold pooled Postgres connections (their key and route lookups)
    when they find the counters missing; the one rebuilding the counters may hold none.
    Waiting, they must give theirs back, or the rebuild cannot get one."""
    import threading
    import time

    from django.db import connection

    from billing.admission import Ask

    pool_size = settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"]
    admission.account_of(tenant.pk)  # cached: admission itself needs no connection before the rebuild
    entered, real = threading.Event(), counters.rebuild

    def rebuild_once_all_wait(*args: Any) -> bool:
        entered.set()
        time.sleep(1.0)  # every other request is waiting now, each holding a connection
        return real(*args)

    monkeypatch.setattr(counters, "rebuild", rebuild_once_all_wait)

    def ask(request_id: str) -> Ask:
        return budget_ask(tenant, request_id, amount=Decimal("0.01"), budget=Decimal("100"))

    answers: dict[str, Any] = {}

    def request(request_id: str, *, lookups: bool) -> None:
        try:
            if lookups:
                Tenant.objects.filter(pk=tenant.pk).exists()  # takes a pooled connection and keeps it
                entered.wait(10)
            answers[request_id] = admission.admit(ask(request_id))
        except Exception as exc:
            answers[request_id] = exc
        finally:
            connection.close()

    cache.clear()  # FLUSHDB: the counters are gone
    rebuilder = threading.Thread(target=request, args=("rebuilder",), kwargs={"lookups": False})
    rebuilder.start()
    entered.wait(10)
    others = [threading.Thread(target=request, args=(f"r{i}",), kwargs={"lookups": True}) for i in range(pool_size)]
    started = time.monotonic()
    for thread in others:
        thread.start()
    for thread in [rebuilder, *others]:
        thread.join(30)

    assert all(isinstance(a, admission.Admission) for a in answers.values()), answers
    assert len(answers) == pool_size + 1
    assert time.monotonic() - started < 5, "nobody waited out the pool's timeout"
