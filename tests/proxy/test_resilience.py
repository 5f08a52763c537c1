"""Routing and resilience against a fault-injecting loopback upstream: failover before the
first byte, no retry after it, exclusion of tried deployments, Retry-After, fallback
models, the circuit breaker, and one ledger row per client request."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from django.conf import LazySettings
from redis.exceptions import RedisError

from billing.models import Model, Price, UsageRecord
from proxy import circuit
from proxy.models import Deployment, Fallback, Provider
from tests.conftest import UPSTREAM_KEY_ENV, Api, Catalog, Upstream, free_port, sse_events, user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_retries(settings: LazySettings) -> None:
    settings.TOLLWAY = {
        **settings.TOLLWAY,
        "RETRY_MAX_ATTEMPTS": 3,
        "RETRY_BACKOFF_BASE_SECONDS": 0.001,
        "RETRY_BACKOFF_MAX_SECONDS": 0.01,
        "RETRY_AFTER_MAX_SECONDS": 2.0,
        "CIRCUIT_FAILURES": 3,
        "CIRCUIT_EJECT_SECONDS": 0.3,
    }


def provider(name: str, base_url: str, **fields: Any) -> Provider:
    return Provider.objects.create(
        name=name, kind=Provider.Kind.OPENAI, base_url=base_url, api_key_env=UPSTREAM_KEY_ENV, **fields
    )


def model(name: str, *deployments: tuple[Provider, str, int], prices: tuple[str, str] = ("1", "2")) -> Model:
    """A priced model with (provider, upstream model, priority) deployments."""
    m = Model.objects.create(name=name)
    Price.objects.create(model=m, input_per_mtok=Decimal(prices[0]), output_per_mtok=Decimal(prices[1]))
    for prov, upstream_model, priority in deployments:
        Deployment.objects.create(model=m, provider=prov, upstream_model=upstream_model, priority=priority)
    return m


def seen(upstream: Upstream) -> list[str]:
    """The upstream model of each request the loopback upstream received, in order."""
    return [r["body"]["model"] for r in upstream.received() if r["method"] == "POST"]


@pytest.fixture
def loop(mock_upstream: Upstream) -> Provider:
    mock_upstream.forget()
    return provider("loop", mock_upstream.base_url)


def test_a_failure_before_the_first_byte_fails_over_unnoticed_and_bills_once(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider
) -> None:
    # given a model whose first-choice deployment answers 503
    backup = provider("backup", mock_upstream.base_url)
    model("m", (loop, "mock-error-503", 0), (backup, "healthy-b", 1))
    # when a client asks once
    response = api.chat({"model": "m", "messages": user("hi")})
    # then it gets the backup's answer, as if nothing happened
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert response["x-tollway-provider"] == "backup"
    assert response["x-tollway-attempts"] == "2"
    assert seen(mock_upstream) == ["mock-error-503", "healthy-b"]
    row = UsageRecord.objects.get()
    assert (row.provider, row.upstream_model, row.attempts, row.requested_model) == ("backup", "healthy-b", 2, "")


def test_connect_refused_and_a_stalled_stream_fail_over(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider
) -> None:
    dead = provider("dead", f"http://127.0.0.1:{free_port()}/v1", connect_timeout=0.2)
    stall = provider("stall", mock_upstream.base_url, idle_timeout=0.2)
    model("s", (dead, "nobody-home", 0), (stall, "mock-stall", 1), (loop, "healthy", 2))
    events = sse_events(api.chat({"model": "s", "messages": user("hi"), "stream": True}))
    # the stall sent its headers but no chunk before its idle limit: nothing reached the client yet
    assert events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "error" in e for e in events)
    assert seen(mock_upstream) == ["mock-stall", "healthy"]
    row = UsageRecord.objects.get()
    assert (row.provider, row.attempts, row.outcome) == ("loop", 3, "completed")


@pytest.mark.parametrize("stream", [False, True])
def test_a_connection_reset_before_the_answer_fails_over(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, stream: bool
) -> None:
    backup = provider("backup", mock_upstream.base_url)
    model("reset", (loop, "mock-reset", 0), (backup, "healthy-b", 1))
    response = api.chat({"model": "reset", "messages": user("hi"), "stream": stream})
    assert response.status_code == 200 and response["x-tollway-attempts"] == "2"
    if stream:
        assert sse_events(response)[-1] == "[DONE]"
    assert seen(mock_upstream) == ["mock-reset", "healthy-b"]
    assert UsageRecord.objects.get().attempts == 2


def test_no_retry_after_the_first_byte(api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider) -> None:
    backup = provider("backup", mock_upstream.base_url)
    model("c", (loop, "mock-cut", 0), (backup, "healthy-b", 1))
    response = api.chat({"model": "c", "messages": user("hi"), "stream": True})
    assert response["x-tollway-attempts"] == "1"
    events = sse_events(response)
    # the cut after some chunks is an SSE error event, never a silent end or a second call
    assert events[0]["choices"]
    assert "error" in events[-1] and "[DONE]" not in events
    assert seen(mock_upstream) == ["mock-cut"]
    row = UsageRecord.objects.get()
    assert (row.outcome, row.attempts) == ("upstream_error", 1)
    # the break still counts against the deployment's circuit
    assert "1 consecutive failures" in circuit.describe(Deployment.objects.get(upstream_model="mock-cut").pk)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_and_credential_errors_are_not_retried(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, status: int
) -> None:
    backup = provider("backup", mock_upstream.base_url)
    model("x", (loop, f"mock-error-{status}", 0), (backup, "healthy-b", 1))
    response = api.chat({"model": "x", "messages": user("hi")})
    assert response.status_code >= 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response["x-tollway-attempts"] == "1"
    assert seen(mock_upstream) == [f"mock-error-{status}"]
    assert not UsageRecord.objects.exists()


def test_each_deployment_is_tried_at_most_once_and_the_last_error_is_returned(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, settings: LazySettings
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "RETRY_MAX_ATTEMPTS": 10}
    other = provider("other", mock_upstream.base_url)
    model("two", (loop, "mock-error-500", 0), (other, "mock-error-529", 0))
    response = api.chat({"model": "two", "messages": user("hi")})
    assert response.status_code in (502, 503)
    assert response.json()["error"]["type"] == "upstream_error"
    assert response["x-tollway-attempts"] == "2"
    assert sorted(seen(mock_upstream)) == ["mock-error-500", "mock-error-529"]
    assert not UsageRecord.objects.exists()


def test_the_attempt_budget_caps_retries(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, settings: LazySettings
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "RETRY_MAX_ATTEMPTS": 2}
    a, b = provider("a", mock_upstream.base_url), provider("b", mock_upstream.base_url)
    model("three", (loop, "mock-error-502", 0), (a, "mock-error-502", 1), (b, "healthy", 2))
    response = api.chat({"model": "three", "messages": user("hi")})
    assert response.status_code == 502 and response["x-tollway-attempts"] == "2"
    assert len(seen(mock_upstream)) == 2


def test_retry_after_is_waited_and_capped(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, settings: LazySettings
) -> None:
    # mock-busy answers 503 with Retry-After: 1
    backup = provider("backup", mock_upstream.base_url)
    model("r", (loop, "mock-busy", 0), (backup, "healthy-b", 1))
    started = time.monotonic()
    assert api.chat({"model": "r", "messages": user("hi")}).status_code == 200
    assert time.monotonic() - started >= 1.0
    settings.TOLLWAY = {**settings.TOLLWAY, "RETRY_AFTER_MAX_SECONDS": 0.1}
    started = time.monotonic()
    response = api.chat({"model": "r", "messages": user("hi")})
    assert response.status_code == 200 and response["x-tollway-attempts"] == "2"
    assert time.monotonic() - started < 0.9
    assert UsageRecord.objects.count() == 2


def test_an_upstream_429_moves_to_another_deployment_at_once_and_never_opens_the_circuit(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider
) -> None:
    # given a first-choice deployment that is rate limited (429, Retry-After: 1)
    backup = provider("backup", mock_upstream.base_url)
    m = model("rl", (loop, "mock-error-429", 0), (backup, "healthy-b", 1))
    limited = Deployment.objects.get(model=m, provider=loop)
    body = {"model": "rl", "messages": user("hi")}
    for _ in range(5):  # more than CIRCUIT_FAILURES (3)
        started = time.monotonic()
        response = api.chat(body)
        # then the call moves to the other deployment without waiting out the Retry-After
        assert (response.status_code, response["x-tollway-provider"], response["x-tollway-attempts"]) == (
            200,
            "backup",
            "2",
        )
        assert time.monotonic() - started < 0.9
    # and the rate-limited deployment is still tried first: its circuit never opened
    assert circuit.describe(limited.pk).startswith("closed")
    assert seen(mock_upstream).count("mock-error-429") == 5


def test_an_upstream_429_with_nowhere_else_to_go_is_the_clients_429_every_time(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider
) -> None:
    model("only", (loop, "mock-error-429", 0))
    for _ in range(6):  # five 429s used to eject the only deployment: then 503 for everyone
        response = api.chat({"model": "only", "messages": user("hi")})
        assert response.status_code == 429, response.content
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert response["Retry-After"] == "1"  # the provider's own advice
    assert len(seen(mock_upstream)) == 6
    assert not UsageRecord.objects.exists()


def test_a_fallback_model_serves_at_its_own_price_and_the_row_names_the_model_asked_for(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider
) -> None:
    primary = model("gpt-x", (loop, "mock-error-503", 0), prices=("8", "32"))
    backup = model("claude-x", (loop, "healthy-claude", 0), prices=("15", "75"))
    Fallback.objects.create(model=primary, fallback=backup)
    response = api.chat({"model": "gpt-x", "messages": user("hi")})
    assert response.status_code == 200
    assert response.json()["model"] == "claude-x"
    assert response["x-tollway-attempts"] == "2"
    row = UsageRecord.objects.get()
    assert (row.model_id, row.requested_model, row.input_price_per_mtok) == (backup.pk, "gpt-x", Decimal("15"))


def test_a_fallback_the_key_may_not_use_is_skipped(
    client: Any, catalog: Catalog, mock_upstream: Upstream, loop: Provider, tenant: Any, make_key: Any
) -> None:
    primary = model("gpt-x", (loop, "mock-error-503", 0))
    Fallback.objects.create(model=primary, fallback=model("claude-x", (loop, "healthy", 0)))
    limited = Api(client, make_key(tenant, allowed_models=["gpt-*"]).plaintext)
    response = limited.chat({"model": "gpt-x", "messages": user("hi")})
    assert response.status_code == 503
    assert seen(mock_upstream) == ["mock-error-503"]


def test_circuit_opens_after_n_failures_and_closes_after_a_healthy_probe(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the circuit's clock, moved on by hand instead of sleeping through the ejection
    now = [time.time()]
    monkeypatch.setattr(circuit, "clock", lambda: now[0])
    # given a first-choice deployment that fails its first 3 calls, then recovers
    backup = provider("backup", mock_upstream.base_url)
    m = model("cb", (loop, "mock-flaky-3-cb", 0), (backup, "healthy-b", 1))
    flaky = Deployment.objects.get(model=m, provider=loop)
    body = {"model": "cb", "messages": user("hi")}
    for _ in range(3):  # each fails over, unnoticed
        assert api.chat(body)["x-tollway-attempts"] == "2"
    assert circuit.describe(flaky.pk).startswith("OPEN")
    # while open, it is skipped: no call reaches it
    mock_upstream.forget()
    response = api.chat(body)
    assert (response["x-tollway-provider"], response["x-tollway-attempts"]) == ("backup", "1")
    assert seen(mock_upstream) == ["healthy-b"]
    # after the ejection time (0.3 s), one probe goes through; it succeeds and closes the circuit
    now[0] += 0.35
    assert circuit.describe(flaky.pk).startswith("HALF-OPEN")
    response = api.chat(body)
    assert (response["x-tollway-provider"], response["x-tollway-attempts"]) == ("loop", "1")
    assert circuit.describe(flaky.pk).startswith("closed")
    assert api.chat(body)["x-tollway-provider"] == "loop"
    assert UsageRecord.objects.count() == 6  # one row per client request, whatever the attempts


def test_ejection_grows_with_each_ejection_and_a_failed_probe_ejects_again(settings: LazySettings) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "CIRCUIT_FAILURES": 2, "CIRCUIT_EJECT_SECONDS": 10.0}
    now = 1_000_000.0
    circuit.clock = lambda: now
    try:
        assert circuit.record_failure(7, status=503, latency_ms=5) == "closed"  # one transient error is not enough
        assert circuit.record_failure(7, status=503, latency_ms=5) == "opened"
        assert circuit.states([7])[7].open_until == now + 10
        now += 11  # half-open: a failed probe ejects again at once, for twice as long
        assert circuit.states([7])[7].half_open(now)
        assert circuit.record_failure(7, status=503, latency_ms=5) == "opened"
        assert circuit.states([7])[7].open_until == now + 20
    finally:
        circuit.clock = time.time


def test_half_open_lets_exactly_one_probe_through() -> None:
    assert circuit.acquire_probe(42) is True
    assert [circuit.acquire_probe(42) for _ in range(5)] == [False] * 5


def test_a_clean_circuit_is_remembered_briefly_and_ejections_elsewhere_arrive_after_it(
    settings: LazySettings,
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "CIRCUIT_READ_CACHE_SECONDS": 0.5, "CIRCUIT_FAILURES": 2}
    assert circuit.states([8])[8] == circuit.CLOSED  # read, and remembered as clean
    # Another replica ejects deployment 8: this process trusts its clean reading a while...
    circuit._redis().hset(circuit._key(8), mapping={"fails": 0, "open_until": repr(time.time() + 60)})
    assert circuit.states([8])[8] == circuit.CLOSED
    time.sleep(0.6)
    # ...then reads Redis again, and skips the deployment.
    assert circuit.states([8])[8].ejected(time.time())
    # This process's own failures count at once: no clean reading hides them.
    assert circuit.states([9])[9] == circuit.CLOSED
    assert circuit.record_failure(9, status=503, latency_ms=1) == "closed"
    assert circuit.states([9])[9].fails == 1
    assert circuit.record_failure(9, status=503, latency_ms=1) == "opened"
    assert circuit.states([9])[9].ejected(time.time())


def test_circuits_read_closed_when_redis_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise RedisError("down")

    monkeypatch.setattr(circuit, "_redis", broken)
    assert circuit.states([1, 2]) == {1: circuit.CLOSED, 2: circuit.CLOSED}
    assert circuit.record_failure(1, status=503, latency_ms=1) == "closed"


def test_every_deployment_ejected_answers_503_with_retry_after(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, settings: LazySettings
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "CIRCUIT_FAILURES": 1, "CIRCUIT_EJECT_SECONDS": 30.0}
    model("down", (loop, "mock-error-500", 0))
    assert api.chat({"model": "down", "messages": user("hi")}).status_code == 502
    response = api.chat({"model": "down", "messages": user("hi")})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_available_deployment"
    assert 1 <= int(response["Retry-After"]) <= 31
    assert seen(mock_upstream) == ["mock-error-500"]


def test_the_reservation_covers_the_dearest_fallback(
    api: Api, catalog: Catalog, mock_upstream: Upstream, loop: Provider, tenant: Any
) -> None:
    # given a $0.50 budget: a cheap model's reservation fits, a dear fallback's would not
    tenant.monthly_budget_usd = Decimal("0.50")
    tenant.save()
    cheap = model("cheap", (loop, "healthy", 0), prices=("1", "1"))
    body = {"model": "cheap", "messages": user("hi"), "max_tokens": 1000}
    assert api.chat(body).status_code == 200
    Fallback.objects.create(model=cheap, fallback=model("dear", (loop, "healthy", 0), prices=("1", "1000")))
    # then the request is refused before any upstream call: it could cost $1 if the fallback served
    response = api.chat(body)
    assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"
    assert UsageRecord.objects.count() == 1
