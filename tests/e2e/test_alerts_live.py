"""Spend alerts fire exactly once per threshold when concurrent calls on several processes
cross it together: two gunicorn servers of two workers each, a real Celery worker, a real
SMTP server and a webhook receiver on loopback. With ``postgres`` the servers have no Redis:
budgets hold through row locks, alerts are sent in-process, and the unique insert decides."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from billing.models import BillingProfile, Delivery, SpendAlert, WebhookEvent
from billing.pricing import PriceSnapshot, TokenUsage, cost_of
from proxy import tokens
from tenants.models import Tenant
from tests.conftest import ROOT, Catalog, ledger_settled, stop, user
from tests.delivery import Inbox, Receiver
from tests.e2e.conftest import serve
from tests.e2e.test_limits_live import fire

pytestmark = pytest.mark.live

MESSAGES = user("Alert me, please.")
BODY = {"model": "gpt-4.1", "messages": MESSAGES, "max_tokens": 5}
CALLS = 20


def reservation() -> Decimal:
    prompt = max(tokens.prompt_tokens(MESSAGES), len(json.dumps(MESSAGES)) // 3)
    return cost_of(TokenUsage(prompt, 5), PriceSnapshot(Decimal(8), Decimal(32), None))  # type: ignore[arg-type]


@pytest.fixture(params=["redis", "postgres"])
def stack(
    request: Any, production_env: dict[str, str], catalog: Catalog, smtp: Inbox, settings: Any
) -> Iterator[list[str]]:
    env = {
        **production_env,
        "WEB_CONCURRENCY": "2",
        "TOLLWAY_MOCK_LATENCY_MS": "500",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(settings.EMAIL_PORT),
        "TOLLWAY_WEBHOOK_ALLOW_PRIVATE": "1",
    }
    procs: list[subprocess.Popen[Any]] = []  # stopped however far the start got
    bases: list[str] = []
    try:
        if request.param == "postgres":
            env.pop("REDIS_URL")  # no Redis: Postgres budgets, Celery eager in each server process
        else:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "config",
                        "worker",
                        "--pool",
                        "solo",
                        "-l",
                        "WARNING",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],
                    cwd=ROOT,
                    env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
                )
            )
        for _ in range(2):
            proc, base = serve(env)
            procs.append(proc)
            bases.append(base)
        yield bases
    finally:
        for proc in procs:
            stop(proc)


def test_each_threshold_alerts_once_when_concurrent_calls_cross_it(
    stack: list[str],
    tenant: Tenant,
    make_key: Any,
    smtp: Inbox,
    receiver: Receiver,
) -> None:
    # given a budget of 30 reservations, alerts at 25 % and 50 %, an e-mail and a webhook
    tenant.monthly_budget_usd = (reservation() * 30).quantize(Decimal("0.01"), rounding="ROUND_UP")
    tenant.billing_email = "ap@acme.example"
    tenant.save()
    profile = BillingProfile.objects.create(
        tenant=tenant, alert_thresholds=[25, 50], webhook_url=f"{receiver.url}/tenant"
    )
    receiver.secrets = {"/tenant": profile.webhook_secret}
    token = make_key(tenant).plaintext

    # when 20 calls go at once to four processes (each costs at least 75 % of its reservation)
    responses = fire(stack, token, CALLS, BODY)

    # then all were served, and each threshold sent one e-mail and one webhook
    assert [r.status_code for r in responses] == [200] * CALLS
    ledger_settled(CALLS)
    deadline = time.monotonic() + 30
    while (len(smtp.messages) < 2 or len(receiver.received) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a duplicate would arrive by now
    assert sorted(SpendAlert.objects.values_list("threshold", flat=True)) == ["25", "50"]
    subjects = sorted(message["Subject"] for _, message in smtp.messages)
    assert subjects == [
        f"{tenant.name}: 25% of this month's budget used",
        f"{tenant.name}: 50% of this month's budget used",
    ]
    assert sorted(body["data"]["threshold"] for _, body, ok in receiver.received if ok) == ["25", "50"]
    assert WebhookEvent.objects.filter(type="spend.threshold").count() == 2
    assert Delivery.objects.filter(channel="email", ok=True).count() == 2
