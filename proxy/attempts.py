"""Stage 5, call: pick a deployment, call it, and retry elsewhere, before the first byte only.

A client request gets at most ``RETRY_MAX_ATTEMPTS`` upstream attempts within
``RETRY_BUDGET_SECONDS``. Each attempt goes to a deployment not yet tried in this
request (One API #335 retried the channel that had just failed): weighted random among
the best priority that is healthy, then the next priority, then the model's fallback
models. Ejected deployments (``proxy.circuit``) are skipped; a half-open one takes one
probe.

Retried: connect errors, timeouts and resets before the first byte, and 408, 409, 429,
5xx and 529. A 429 is the provider rationing *us*, not the deployment failing: it never
counts toward the circuit, and it moves the call to another deployment at once (its
``Retry-After`` is about the deployment that sent it, which this request never tries
again); with no other deployment the client gets the 429 and the provider's Retry-After.

Never retried: 400, 401, 403, 404, 422, anything Tollway refused itself, and anything
after the first byte has gone to the client. A stream counts as begun only once
its first chunk has arrived (:func:`primed`), so a stream that fails before that is
retried too; after it, a failure is the relay's SSE error event.

Between attempts: full-jitter exponential backoff, or the provider's ``Retry-After`` when
it said one (capped at ``RETRY_AFTER_MAX_SECONDS``), whichever is longer.

All attempts share the request's one admission reservation and write one ledger row,
which names the deployment that served and the number of attempts.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.conf import settings

from billing.pricing import PriceSnapshot, TokenUsage
from config.errors import ErrorCode, TollwayError, UpstreamError
from proxy import circuit, observe
from proxy.adapters.base import ChunkStream
from proxy.route import Route, RouteEntry, Target, pick_target

log = logging.getLogger(__name__)

Answer = TypeVar("Answer")

# Injectable for tests: how to wait, and the jitter source.
sleep: Callable[[float], None] = time.sleep
rng = random.Random()


class Picker:
    """Hands out the deployments to try, in order, never the same one twice."""

    def __init__(self, steps: list[tuple[RouteEntry, PriceSnapshot]], *, rand: random.Random | None = None) -> None:
        self.steps = steps
        self.rand = rand
        self.tried: set[int] = set()
        self.health: dict[int, circuit.Health] = {}
        self._read: set[int] = set()  # model pks whose circuits were read

    def _states(self, entry: RouteEntry) -> None:
        if entry.model_pk not in self._read:
            self._read.add(entry.model_pk)
            self.health.update(circuit.states(t.deployment_pk for t in entry.targets))

    def next(self) -> Route | None:
        """The next deployment to try, or None when every one is tried or ejected."""
        now = circuit.clock()
        for entry, price in self.steps:
            self._states(entry)
            while True:
                open_ = [
                    t
                    for t in entry.targets
                    if t.deployment_pk not in self.tried
                    and not self.health.get(t.deployment_pk, circuit.CLOSED).ejected(now)
                ]
                if not open_:
                    break
                target = pick_target(tuple(open_), rng=self.rand)
                self.tried.add(target.deployment_pk)
                health = self.health.get(target.deployment_pk, circuit.CLOSED)
                if health.half_open(now) and not circuit.acquire_probe(target.deployment_pk):
                    continue  # another request is probing it
                return Route(entry=entry, price=price, target=target)
        return None

    def health_of(self, target: Target) -> circuit.Health:
        return self.health.get(target.deployment_pk, circuit.CLOSED)

    def unavailable(self) -> UpstreamError:
        """Why there is nothing to try: no deployment at all, or all of them ejected."""
        name = self.steps[0][0].name
        if not any(entry.targets for entry, _ in self.steps):
            return UpstreamError(
                f"The model `{name}` has no active deployment right now.", code=ErrorCode.NO_DEPLOYMENT, status=503
            )
        ejected = [h.open_until for h in self.health.values() if h.open_until > 0]
        wait = max(1, int(min(ejected) - circuit.clock()) + 1) if ejected else 1
        return UpstreamError(
            f"Every deployment of the model `{name}` is failing right now; retry shortly.",
            code=ErrorCode.NO_DEPLOYMENT,
            status=503,
            headers={"Retry-After": str(wait)},
        )


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: full jitter, or the provider's
    Retry-After (capped) if longer."""
    conf = settings.TOLLWAY
    base = float(conf["RETRY_BACKOFF_BASE_SECONDS"])
    ceiling = min(float(conf["RETRY_BACKOFF_MAX_SECONDS"]), base * 2 ** (attempt - 1))
    wait = rng.uniform(0, ceiling)
    if retry_after is not None:
        wait = max(wait, min(retry_after, float(conf["RETRY_AFTER_MAX_SECONDS"])))
    return wait


def _counts_against(exc: TollwayError) -> bool:
    """A failure of the deployment itself (not of the request, nor a provider's rate
    limit): feeds its circuit."""
    if exc.upstream_status == 429:
        return False
    return exc.retryable or exc.code == ErrorCode.UPSTREAM_AUTH


def run(call: Any, picker: Picker, attempt: Callable[[Any], Answer]) -> Answer:
    """Call ``attempt(call)`` with ``call.route`` set to each deployment in turn until one
    answers, a failure is not worth retrying, or the budget is spent. ``attempt`` must not
    send anything to the client before it returns (streams are :func:`primed`). Its
    answer is returned: a response on the live path, a completion for a batch line."""
    conf = settings.TOLLWAY
    deadline = time.monotonic() + float(conf["RETRY_BUDGET_SECONDS"])
    limit = max(1, int(conf["RETRY_MAX_ATTEMPTS"]))
    while True:
        target = call.route.target
        started = time.monotonic()
        try:
            response = attempt(call)
        except TollwayError as exc:
            latency = int((time.monotonic() - started) * 1000)
            if _counts_against(exc):
                circuit.record_failure(target.deployment_pk, status=exc.upstream_status, latency_ms=latency)
            exc.headers["x-tollway-attempts"] = str(call.attempts)
            if not exc.retryable or call.attempts >= limit:
                raise
            rate_limited = exc.upstream_status == 429
            wait = 0.0 if rate_limited else backoff(call.attempts, exc.retry_after)
            if time.monotonic() + wait > deadline:
                raise
            following = picker.next()
            if following is None:
                raise
            log.info(
                "request %s: attempt %s on %s failed (%s); retrying on %s in %.2fs",
                call.request_id,
                call.attempts,
                target.provider_name,
                exc.upstream_status or exc.code,
                following.target.provider_name,
                wait,
            )
            observe.attempt_failed(target.provider_name, str(exc.code))
            sleep(wait)
            call.route = following
            call.attempts += 1
            continue
        latency = int((time.monotonic() - started) * 1000)
        circuit.record_success(target.deployment_pk, picker.health_of(target), status=200, latency_ms=latency)
        return response


class Primed:
    """A stream whose first chunk has already arrived: proof the provider is answering.

    Reading it before the response starts is what lets a stream that fails before its
    first chunk be retried; once the relay sends that chunk, nothing is retried.
    """

    def __init__(self, stream: ChunkStream) -> None:
        self.stream = stream
        self._chunks = iter(stream)
        try:
            self._first: list[dict[str, Any]] = [next(self._chunks)]
        except StopIteration:
            self._first = []
        except BaseException:
            stream.close()
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from self._first
        yield from self._chunks

    def close(self) -> None:
        self.stream.close()

    def partial_usage(self) -> TokenUsage | None:
        return self.stream.partial_usage()

    def take_bytes(self) -> bool:
        """Whether the stream will hand its later plain chunks over as bytes (``proxy.relay``)."""
        take = getattr(self.stream, "take_bytes", None)
        return bool(take()) if take is not None else False


def primed(stream: ChunkStream) -> Primed:
    return Primed(stream)
