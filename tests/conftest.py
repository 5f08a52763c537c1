"""Shared fixtures: tenants, keys, a priced catalog, and a real mock upstream on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.cache import cache
from django.test import Client

from billing.admission import connection as admission_connection
from billing.admission import counters as admission_counters
from billing.admission import inflight as admission_inflight
from billing.models import Model, Price
from config import redis as shared_redis
from proxy import circuit
from proxy.models import Deployment, Provider
from proxy.route import listings, routes
from tenants import activity, services
from tenants.cache import principals
from tenants.models import Tenant

ROOT = Path(__file__).resolve().parent.parent
# The headless-Chromium fixture for the web pages' tests; SMTP and webhook receivers; the test
# lanes (unit, live, browser, deploy, faults), applied by directory and fixture, with a summary of skips.
pytest_plugins = ["tests.browser", "tests.delivery", "tests.lanes"]
UPSTREAM_KEY_ENV = "TOLLWAY_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 90.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    if proc is not None:  # a server that never came up must not outlive the test
        stop(proc)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def ledger_settled(count: int, timeout: float = 5.0) -> None:
    """Wait until the ledger holds at least ``count`` rows. A served answer's row is
    committed before the answer is sent (``proxy.relay``), so this returns at once, unless
    the row went through the spool (Postgres unreachable), which writes it later."""
    from billing.models import UsageRecord

    deadline = time.monotonic() + timeout
    while UsageRecord.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.02)


def ledger_row(timeout: float = 5.0, **filters: Any) -> Any:
    """The one ledger row matching ``filters``, waiting for it as :func:`ledger_settled` does."""
    from billing.models import UsageRecord

    deadline = time.monotonic() + timeout
    while not UsageRecord.objects.filter(**filters).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return UsageRecord.objects.get(**filters)


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Upstream:
    base_url: str
    port: int

    def received(self) -> list[dict[str, Any]]:
        """The requests this loopback upstream has received, oldest first."""
        return list(httpx.get(f"http://127.0.0.1:{self.port}/_debug/requests").json())

    def last(self) -> dict[str, Any]:
        return self.received()[-1]

    def forget(self) -> None:
        httpx.delete(f"http://127.0.0.1:{self.port}/_debug/requests")


def start_upstream(kind: str, base_path: str) -> tuple[subprocess.Popen[Any], Upstream]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mockupstream", "--kind", kind, "--port", str(port), "--api-key", UPSTREAM_KEY],
        cwd=ROOT,
    )
    wait_for_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc, Upstream(base_url=f"http://127.0.0.1:{port}{base_path}", port=port)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--via-pgbouncer",
        action="store_true",
        help="connect every server the live tests start (gunicorn, Celery) to Postgres through a real "
        "PgBouncer in transaction mode (tests/pgbouncer.py); `make test` runs the live lane this way once",
    )


@pytest.fixture(scope="session")
def server_database(request: pytest.FixtureRequest, django_db_setup: None) -> Iterator[dict[str, str]]:
    """The database environment of the servers a test starts: the test database, directly,
    or with ``--via-pgbouncer`` through a PgBouncer in transaction mode whose server
    connections default to a time zone that is not UTC (as a managed Postgres may).

    The servers also share this run's var/ directory (``TOLLWAY_VAR_DIR``): the PgBouncer
    lane runs beside the main one, and a server adopts the spool files of dead workers it
    finds there, which must be its own lane's."""
    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    var = {"TOLLWAY_VAR_DIR": str(settings.VAR_DIR)}
    if not request.config.getoption("--via-pgbouncer"):
        url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        yield {"DATABASE_URL": url, **var}
        return
    from tests import pgbouncer

    bouncer = pgbouncer.start(
        host=db["HOST"], port=int(db["PORT"]), user=db["USER"], password=db["PASSWORD"], timezone="America/New_York"
    )
    try:
        yield {**bouncer.app_env(str(db["NAME"])), **var}
        used = bouncer.stats().get(str(db["NAME"]), {}).get("total_xact_count", 0)
        assert used > 0, "--via-pgbouncer: no transaction went through PgBouncer"
    finally:
        bouncer.stop()


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[Upstream]:
    """``python -m tests.mockupstream`` as a real HTTP server on loopback, requiring a key."""
    proc, upstream = start_upstream("openai", "/v1")
    try:
        yield upstream
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def anthropic_upstream() -> Iterator[Upstream]:
    """A loopback server speaking Anthropic's Messages API from tests/fixtures/anthropic."""
    proc, upstream = start_upstream("anthropic", "/v1")
    try:
        yield upstream
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def gemini_upstream() -> Iterator[Upstream]:
    """A loopback server speaking Gemini's generateContent API from tests/fixtures/gemini."""
    proc, upstream = start_upstream("gemini", "/v1beta")
    try:
        yield upstream
    finally:
        stop(proc)


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with empty caches: the database is rolled back between tests
    without signals, so cached keys and routes from a previous test must not survive."""
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    shared_redis.reset()
    cache.clear()
    activity.forget_local()
    admission_connection.reset()
    admission_counters.reset()
    admission_inflight.reset()
    circuit.forget_local()
    for tier in (principals, routes, listings):
        tier.clear_local()
    yield
    for tier in (principals, routes, listings):
        tier.clear_local()


@pytest.fixture
def tenant(db: None) -> Tenant:
    return services.tenant_create(slug="acme", name="Acme Corp")


@pytest.fixture
def other_tenant(db: None) -> Tenant:
    return services.tenant_create(slug="globex", name="Globex")


@pytest.fixture
def make_key() -> Callable[..., services.CreatedKey]:
    def make(tenant: Tenant, name: str = "test", **fields: Any) -> services.CreatedKey:
        return services.api_key_create(tenant=tenant, name=name, **fields)

    return make


@pytest.fixture
def key(tenant: Tenant, make_key: Callable[..., services.CreatedKey]) -> services.CreatedKey:
    return make_key(tenant)


PRICES = {"gpt-4.1": ("8.00", "32.00"), "deepseek-v3": ("0.42", "1.68")}


@dataclass
class Catalog:
    mock: Provider
    models: dict[str, Model]

    def price(self, name: str) -> tuple[Decimal, Decimal]:
        price = self.models[name].prices.get()
        return price.input_per_mtok, price.output_per_mtok

    def add_http_model(
        self,
        name: str,
        upstream: Upstream,
        upstream_model: str,
        prices: tuple[str, str] = ("8", "32"),
        *,
        kind: str = Provider.Kind.OPENAI,
        cache_prices: tuple[str | None, str | None] = (None, None),
        **provider_fields: Any,
    ) -> Model:
        """A model served by a loopback upstream of ``kind`` (one provider per kind)."""
        provider, _ = Provider.objects.get_or_create(
            name="loopback" if kind == Provider.Kind.OPENAI else f"loopback-{kind}",
            defaults={
                "kind": kind,
                "base_url": upstream.base_url,
                "api_key_env": UPSTREAM_KEY_ENV,
                **provider_fields,
            },
        )
        model = Model.objects.create(name=name)
        Price.objects.create(
            model=model,
            input_per_mtok=Decimal(prices[0]),
            output_per_mtok=Decimal(prices[1]),
            cached_input_per_mtok=Decimal(cache_prices[0]) if cache_prices[0] else None,
            cache_write_per_mtok=Decimal(cache_prices[1]) if cache_prices[1] else None,
        )
        Deployment.objects.create(model=model, provider=provider, upstream_model=upstream_model)
        self.models[name] = model
        return model


@pytest.fixture
def catalog(db: None) -> Catalog:
    """Two priced models served by the built-in mock provider."""
    mock = Provider.objects.create(name="mock", kind=Provider.Kind.MOCK)
    models = {}
    for name, (pin, pout) in PRICES.items():
        model = Model.objects.create(name=name)
        Price.objects.create(model=model, input_per_mtok=Decimal(pin), output_per_mtok=Decimal(pout))
        Deployment.objects.create(model=model, provider=mock, upstream_model=name)
        models[name] = model
    return Catalog(mock=mock, models=models)


class Api:
    """The Django test client speaking to the OpenAI-compatible API with a key."""

    def __init__(self, client: Client, token: str | None) -> None:
        self.client = client
        self.token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def chat(self, body: Any, *, raw: bytes | None = None, prefix: str = "/v1") -> Any:
        data = raw if raw is not None else json.dumps(body)
        return self.client.post(
            f"{prefix}/chat/completions", data=data, content_type="application/json", headers=self.headers()
        )

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers())


@pytest.fixture
def api(client: Client, key: services.CreatedKey) -> Api:
    return Api(client, key.plaintext)


def sse_events(response: Any) -> list[Any]:
    """The decoded ``data:`` payloads of a streamed response; "[DONE]" stays a string."""
    text = b"".join(response.streaming_content).decode()
    events: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


os.environ.setdefault(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
