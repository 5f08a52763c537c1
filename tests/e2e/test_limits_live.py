"""Limits hold across processes: real gunicorn servers sharing Postgres and Redis."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.db.models import Sum

from billing import admission
from billing.admission import connection, keys
from billing.models import Price, UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage, cost_of
from proxy import tokens
from tenants.models import Tenant
from tests.conftest import Catalog, ledger_settled, stop, user
from tests.e2e.conftest import serve
from tests.procs import children

pytestmark = pytest.mark.live

MESSAGES = user("Concurrency, please.")
# The mock's answer is longer than 10 tokens, so it is cut there: every call's output is
# exactly what was reserved, and only the prompt estimate's margin comes back at settle.
BODY = {"model": "gpt-4.1", "messages": MESSAGES, "max_tokens": 10}
# Dear enough that a budget in whole cents fits exactly three reservations.
PRICEY = PriceSnapshot(Decimal(2000), Decimal(8000), None)  # type: ignore[arg-type]


def price_dearly() -> None:
    Price.objects.filter(model__name="gpt-4.1").update(
        input_per_mtok=PRICEY.input_per_mtok, output_per_mtok=PRICEY.output_per_mtok
    )


def reservation() -> Decimal:
    prompt = max(tokens.prompt_tokens(MESSAGES), len(json.dumps(MESSAGES)) // 3)
    return cost_of(TokenUsage(prompt, 10), PRICEY)


@pytest.fixture(params=["redis"])
def slow_replicas(request: Any, production_env: dict[str, str], catalog: Catalog) -> Iterator[list[Any]]:
    """Two gunicorn servers whose mock provider takes 1.5 s to answer, so calls overlap.
    With ``postgres``, the servers have no Redis, so budgets hold through row locks."""
    env = {**production_env, "WEB_CONCURRENCY": "1", "TOLLWAY_MOCK_LATENCY_MS": "1500"}
    if request.param == "postgres":
        env.pop("REDIS_URL")
    started = [serve(env) for _ in range(2)]
    try:
        yield started
    finally:
        for proc, _ in started:
            stop(proc)


def fire(bases: list[str], token: str, count: int, body: dict[str, Any]) -> list[httpx.Response]:
    """``count`` requests at once, alternating between the replicas."""
    results: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        with httpx.Client(base_url=bases[i % len(bases)], timeout=30) as client:
            barrier.wait()
            response = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
            with lock:
                results.append(response)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.parametrize("slow_replicas", ["redis", "postgres"], indirect=True)
def test_budget_is_never_overspent_under_concurrency(slow_replicas: list[Any], tenant: Tenant, make_key: Any) -> None:
    # given a budget that admits exactly K of these calls, at once or one after another:
    # each call costs at least 85 % of its reservation (its output is cut at max_tokens),
    # so once K have been admitted what is left never fits another, however the calls
    # interleave with their settles (the count below does not depend on timing)
    price_dearly()
    budget = Decimal("0.40")
    fits = int(budget // reservation())
    assert fits == 3 and budget - fits * reservation() * Decimal("0.85") < reservation()
    tenant.monthly_budget_usd = budget
    tenant.save()
    key = make_key(tenant)

    # when 50 arrive at the same moment, across two server processes
    results = fire([base for _, base in slow_replicas], key.plaintext, 50, BODY)

    # then at most K are admitted; the rest are told the quota is gone, not to retry
    statuses = Counter(r.status_code for r in results)
    assert sum(statuses.values()) == 50
    assert 1 <= statuses[200] <= fits, statuses
    refused = [r for r in results if r.status_code == 429]
    assert len(refused) == 50 - statuses[200]
    assert all(r.json()["error"]["type"] == "insufficient_quota" for r in refused)
    assert all(r.headers["x-should-retry"] == "false" for r in refused)
    ledger_settled(statuses[200])
    spent = UsageRecord.objects.aggregate(s=Sum("cost"))["s"]
    assert UsageRecord.objects.count() == statuses[200]
    assert spent <= budget
    assert all(cost >= reservation() * Decimal("0.85") for cost in UsageRecord.objects.values_list("cost", flat=True))


def test_rpm_admits_exactly_n_across_processes(slow_replicas: list[Any], tenant: Tenant, make_key: Any) -> None:
    key = make_key(tenant, rpm_limit=7)
    if time.time() % 60 > 45:  # keep the burst inside one minute window
        time.sleep(61 - time.time() % 60)
    results = fire([base for _, base in slow_replicas], key.plaintext, 20, {"model": "gpt-4.1", "messages": user("hi")})
    statuses = Counter(r.status_code for r in results)
    assert statuses == {200: 7, 429: 13}, statuses
    assert all(
        r.json()["error"]["type"] == "requests" and r.headers["Retry-After"] for r in results if r.status_code == 429
    )


def test_a_killed_worker_s_call_is_billed_within_seconds(
    slow_replicas: list[Any], tenant: Tenant, make_key: Any
) -> None:
    """gunicorn's child_exit hook reaps a dead worker at once (manage.py reapworker): its
    reservation is billed from its estimate in seconds, not by the sweeper 30 minutes later."""
    price_dearly()
    tenant.monthly_budget_usd = Decimal("1.00")
    tenant.save()
    key = make_key(tenant)
    (proc, base), _ = slow_replicas
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(
                httpx.post(
                    f"{base}/v1/chat/completions",
                    json={**BODY, "stream": True},
                    headers={"Authorization": f"Bearer {key.plaintext}"},
                    timeout=30,
                )
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    redis = connection.client()
    deadlines = keys.deadlines(tenant.pk)
    deadline = time.monotonic() + 5
    while not redis.zcard(deadlines) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redis.zcard(deadlines) == 1, "the call holds a reservation"
    (request_id,) = redis.zrange(deadlines, 0, -1)
    assert redis.hget(keys.reservation(tenant.pk, request_id.decode()), "worker"), "it records its worker"

    # when the worker dies mid-request
    killed_at = time.monotonic()
    for pid in children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    thread.join(30)

    # then its call is billed within seconds, from the reservation, as an estimate
    wait_deadline = time.monotonic() + 60
    while not UsageRecord.objects.exists() and time.monotonic() < wait_deadline:
        time.sleep(0.1)
    row = UsageRecord.objects.get()
    print(f"killed worker's call billed {time.monotonic() - killed_at:.1f}s after the kill")
    assert row.outcome == UsageRecord.Outcome.RESERVATION_EXPIRED and row.usage_estimated
    assert row.cost == reservation()
    assert row.request_id == request_id.decode()
    assert admission.reserved_total(tenant.pk) == 0
    assert not redis.zcard(deadlines)
    assert admission.sweep(now=time.time() + 10_000) == 0, "billed once"
