"""What operators see: Prometheus metrics and one structured log line per request.

Metrics are multiprocess-safe under gunicorn (``PROMETHEUS_MULTIPROC_DIR``, set by
``config/gunicorn.py``). Label values are bounded: the tenant label names at most
``TENANT_LABELS`` tenants per process, then ``other``, so a platform with thousands of
tenants cannot blow up the series count.

The log line carries the request id, tenant, key id, model, provider, status, tokens,
cost, upstream latency and gateway overhead; never a secret and never a prompt.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from billing.pricing import TokenUsage, usd
from config import metrics

if TYPE_CHECKING:
    from proxy.meter import Call

log = logging.getLogger("tollway.request")

TENANT_LABELS = 100
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1)

REQUESTS = Counter(
    "tollway_requests_total", "Requests by outcome", ["endpoint", "model", "provider", "status", "tenant"]
)
REJECTIONS = Counter("tollway_rejections_total", "Requests refused before any upstream call", ["status", "code"])
UPSTREAM_SECONDS = Histogram(
    "tollway_upstream_seconds", "Time spent waiting on the provider", ["provider"], buckets=_LATENCY_BUCKETS
)
OVERHEAD_SECONDS = Histogram(
    "tollway_gateway_overhead_seconds", "Time spent in Tollway itself, upstream excluded", buckets=_OVERHEAD_BUCKETS
)
TTFB_SECONDS = Histogram(
    "tollway_time_to_first_byte_seconds", "From request to the first byte of the answer", buckets=_LATENCY_BUCKETS
)
TOKENS = Counter("tollway_tokens_total", "Tokens billed", ["model", "kind"])
COST = Counter("tollway_cost_usd_total", "USD billed (the ledger is exact; this is for graphs)", ["model"])
UPSTREAM_ERRORS = Counter("tollway_upstream_errors_total", "Provider failures", ["provider", "code"])

_tenants: set[str] = set()
# Labelled children, looked up once (``labels()`` validates and locks on every call), and
# bumped in memory: config.metrics writes them out once a second.
_children: dict[tuple[Any, ...], Any] = {}
_BUCKETS = {UPSTREAM_SECONDS: _LATENCY_BUCKETS}
_OVERHEAD = metrics.PendingHistogram(OVERHEAD_SECONDS, _OVERHEAD_BUCKETS)
_TTFB = metrics.PendingHistogram(TTFB_SECONDS, _LATENCY_BUCKETS)


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        found = metric.labels(*values)
        buckets = _BUCKETS.get(metric)
        child = metrics.PendingHistogram(found, buckets) if buckets else metrics.PendingCounter(found)
        _children[key] = child
    return child


def _tenant_label(slug: str) -> str:
    if slug in _tenants:
        return slug
    if len(_tenants) < TENANT_LABELS:
        _tenants.add(slug)
        return slug
    return "other"


def call_finished(call: Call, usage: TokenUsage, cost: Any, *, outcome: str, estimated: bool) -> None:
    """Count and log a billed call, once, when its ledger row is written."""
    now = time.monotonic()
    target = call.route.target
    model = call.route.entry.name
    upstream = (call.upstream_done or now) - call.upstream_started if call.upstream_started else 0.0
    total = now - call.request_started
    overhead = max(total - upstream, 0.0)
    ttfb = (call.first_byte_at or now) - call.request_started
    status = "200" if outcome == "completed" else outcome
    _child(
        REQUESTS, call.chat.endpoint, model, target.provider_name, status, _tenant_label(call.principal.tenant_slug)
    ).inc()
    _child(UPSTREAM_SECONDS, target.provider_name).observe(upstream)
    _OVERHEAD.observe(overhead)
    _TTFB.observe(ttfb)
    _child(TOKENS, model, "input").inc(usage.input_tokens)
    _child(TOKENS, model, "output").inc(usage.output_tokens)
    _child(TOKENS, model, "cached").inc(usage.cached_input_tokens)
    _child(COST, model).inc(float(cost))
    log.info(
        "request",
        extra={
            "request_id": call.request_id,
            "tenant": call.principal.tenant_slug,
            "key": f"tlw_{call.principal.key_id}",
            "endpoint": call.chat.endpoint,
            "model": model,
            "provider": target.provider_name,
            "upstream_model": target.upstream_model,
            "status": 200,
            "outcome": outcome,
            "stream": call.chat.stream,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_input_tokens,
            "cost_usd": usd(cost),
            "usage_estimated": estimated,
            "attempts": call.attempts,
            "cache_hit": call.cache_hit,
            "upstream_ms": round(upstream * 1000, 2),
            "overhead_ms": round(overhead * 1000, 2),
            "ttfb_ms": round(ttfb * 1000, 2),
            "total_ms": round(total * 1000, 2),
        },
    )


def attempt_failed(provider: str, code: str) -> None:
    """Count a failed upstream attempt that Tollway retried elsewhere (the client never saw it)."""
    UPSTREAM_ERRORS.labels(provider, code).inc()


def call_refused(request: Any, status: int, code: str, *, provider: str | None = None) -> None:
    """Count and log a request answered with an error."""
    if provider:
        UPSTREAM_ERRORS.labels(provider, code).inc()
    else:
        REJECTIONS.labels(str(status), code).inc()
    log.info(
        "request refused",
        extra={
            "request_id": getattr(request, "request_id", None),
            "path": request.path,
            "status": status,
            "code": code,
            "provider": provider,
        },
    )


class SpoolCollector:
    """``tollway_spool_rows``: ledger rows waiting in this replica's spool for Postgres,
    read from the spool files at scrape time (every worker's, whichever answers)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from billing import spool

        yield GaugeMetricFamily(
            "tollway_spool_rows", "Ledger rows waiting in the spool for the database", value=spool.depth()
        )


def exposition() -> tuple[bytes, str]:
    """The metrics page: every gunicorn worker's, merged, when running multiprocess."""
    metrics.flush()  # this worker's own counts, up to now
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(SpoolCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward:
    """The process's own registry, inside the page's registry (single-process mode)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()
