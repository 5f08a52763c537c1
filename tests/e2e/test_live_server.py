"""The official openai SDK against Tollway served as production serves it: gunicorn with
gevent workers (config/gunicorn.py), over real HTTP, backed by the loopback mock upstream."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings

from billing.models import UsageRecord
from tenants import services
from tenants.models import Tenant
from tests.conftest import ROOT, Catalog, Upstream, ledger_row, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live


@pytest.fixture
def live(production_env: dict[str, str], catalog: Catalog, mock_upstream: Upstream) -> Iterator[str]:
    """One gunicorn server with two gevent workers, backed by the loopback mock upstream."""
    catalog.add_http_model("gpt-4.1-http", mock_upstream, "gpt-4.1", prices=("8", "32"))
    proc, base = serve(production_env)
    try:
        yield base
    finally:
        stop(proc)


@pytest.fixture
def replicas(production_env: dict[str, str], catalog: Catalog) -> Iterator[list[str]]:
    """Two separate gunicorn servers, as two replicas behind a load balancer would be."""
    started = [serve({**production_env, "WEB_CONCURRENCY": "1"}) for _ in range(2)]
    try:
        yield [base for _, base in started]
    finally:
        for proc, _ in started:
            stop(proc)


def test_sdk_completion_and_stream_are_priced_and_recorded(live: str, key: services.CreatedKey, sdk: Any) -> None:
    client = sdk(live, key.plaintext)

    # a completion, with the cost in the body and in a header
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1-http", messages=[{"role": "user", "content": "Hello from the SDK"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.model == "gpt-4.1-http"
    usage = completion.usage.model_dump()
    # Metered before answering: the row is there as soon as the answer is.
    row = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    expected = (Decimal(usage["prompt_tokens"]) * 8 + Decimal(usage["completion_tokens"]) * 32) / 1_000_000
    assert row.cost == expected
    assert usage["cost"] == raw.headers["x-tollway-cost"] == str(row.cost)
    assert row.provider == "loopback" and not row.streamed

    # a stream, whose last chunk carries the usage and its cost
    chunks = list(
        client.chat.completions.create(
            model="gpt-4.1-http",
            messages=[{"role": "user", "content": "Stream to the SDK"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Mock answer:")
    final = chunks[-1].usage.model_dump()
    streamed = UsageRecord.objects.get(streamed=True)
    assert final["cost"] == str(streamed.cost) and streamed.cost > 0
    assert final["completion_tokens"] == streamed.output_tokens
    assert UsageRecord.objects.count() == 2

    # the model list the SDK sees
    assert {m.id for m in client.models.list()} == {"gpt-4.1", "deepseek-v3", "gpt-4.1-http"}


def test_sdk_sees_errors_in_openai_shape(
    live: str, key: services.CreatedKey, catalog: Catalog, mock_upstream: Upstream, sdk: Any
) -> None:
    with pytest.raises(openai.AuthenticationError) as auth:
        sdk(live, "tlw_not_a_key").models.list()
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(live, key.plaintext).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"

    # a stream the upstream cuts off raises in the SDK instead of ending quietly, and is billed
    catalog.add_http_model("flaky", mock_upstream, "mock-cut")
    stream = sdk(live, key.plaintext).chat.completions.create(
        model="flaky", messages=[{"role": "user", "content": "cut"}], stream=True
    )
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in stream:
            pass
    row = ledger_row(model__name="flaky")  # written as the stream ends, just after the client saw it
    assert row.outcome == UsageRecord.Outcome.UPSTREAM_ERROR and row.usage_estimated and row.cost > 0


def statuses(bases: list[str], token: str, path: str = "/v1/models", rounds: int = 5) -> set[int]:
    """The status codes every replica answers ``token`` with."""
    seen = set()
    for base in bases:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
            seen |= {client.get(path).status_code for _ in range(rounds)}
    return seen


def within_a_second(bases: list[str], token: str, expected: int) -> float:
    """Seconds until every replica answers ``expected``; fails after 1 s plus scheduling slack."""
    start = time.monotonic()
    while time.monotonic() - start < settings.TOLLWAY["LOCAL_CACHE_SECONDS"] + 0.5:
        if statuses(bases, token, rounds=2) == {expected}:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"replicas still answer {statuses(bases, token)} instead of {expected}")


def test_revocation_rotation_and_suspension_reach_every_replica_within_a_second(
    replicas: list[str], tenant: Tenant, make_key: Any
) -> None:
    # given a key that both replicas have cached
    revoked = make_key(tenant)
    assert statuses(replicas, revoked.plaintext) == {200}
    # when it is revoked, every replica refuses it within a second
    services.api_key_revoke(api_key=revoked.api_key)
    within_a_second(replicas, revoked.plaintext, 401)

    # a rotation without grace retires the old secret everywhere, and the new one works
    rotating = make_key(tenant)
    assert statuses(replicas, rotating.plaintext) == {200}
    new = services.api_key_rotate(api_key=rotating.api_key)
    within_a_second(replicas, rotating.plaintext, 401)
    assert statuses(replicas, new.plaintext) == {200}

    # suspending the tenant stops all of its keys
    assert statuses(replicas, new.plaintext) == {200}
    services.tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED)
    within_a_second(replicas, new.plaintext, 403)


def test_embedded_default_as_make_run_serves_it(tmp_path: Path, sdk: Any) -> None:
    """Nothing configured: SQLite under var/, seeded demo data, the demo key printed once."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "DEBUG": "1",
        "TOLLWAY_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    seeded = subprocess.run(
        [*manage, "seeddemo"], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=60
    )
    demo_key = seeded.stdout.strip().splitlines()[-1]
    again = subprocess.run(
        [*manage, "seeddemo"], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=60
    )
    assert demo_key not in again.stdout, "the key is printed once"

    proc, base = serve({**env, "WEB_CONCURRENCY": "1"})
    try:
        client = sdk(base, demo_key)
        raw = client.chat.completions.with_raw_response.create(
            model="deepseek-v3", messages=[{"role": "user", "content": "hello"}]
        )
        cost = raw.headers["x-tollway-cost"]
        chunks = list(
            client.chat.completions.create(
                model="gpt-4.1",
                messages=[{"role": "user", "content": "hello"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        stream_cost = chunks[-1].usage.model_dump()["cost"]
    finally:
        stop(proc)

    with sqlite3.connect(tmp_path / "tollway.sqlite3") as db:
        rows = db.execute(
            "SELECT m.name, u.input_tokens, u.output_tokens, u.cost, u.streamed FROM billing_usagerecord u "
            "JOIN billing_model m ON m.id = u.model_id ORDER BY u.id"
        ).fetchall()
    assert [(r[0], bool(r[4])) for r in rows] == [("deepseek-v3", False), ("gpt-4.1", True)]
    (_, din, dout, dcost, _), (_, gin, gout, gcost, _) = rows
    assert Decimal(str(dcost)) == Decimal(cost) == (din * Decimal("0.42") + dout * Decimal("1.68")) / 1_000_000
    assert Decimal(str(gcost)) == Decimal(stream_cost) == (gin * 8 + gout * 32) / Decimal(1_000_000)


def test_metrics_merge_every_worker(live: str, key: services.CreatedKey) -> None:
    """Two gevent workers, one /metrics: prometheus-client's multiprocess mode. Each
    worker writes its counts out once a second (config.metrics)."""
    headers = {"Authorization": f"Bearer {key.plaintext}"}
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "count"}]}

    def served(client: httpx.Client) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("tollway_requests_total{") and 'model="gpt-4.1"' in line and 'status="200"' in line
        )

    with httpx.Client(base_url=live) as client:
        for _ in range(20):
            assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        deadline = time.monotonic() + 5
        while served(client) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # past every worker's next write: nothing counted twice
        assert served(client) == 20
