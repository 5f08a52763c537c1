"""config.metrics: counts bumped in memory reach their metrics whole, in the right
buckets, within a second, and at once when the metrics page is rendered."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from config import metrics
from proxy import observe

BUCKETS = (0.001, 0.01, 0.1, 1.0)


@pytest.fixture
def batching(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a gevent worker."""
    monkeypatch.setattr(metrics, "_batching", True)
    yield
    metrics.flush()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return found if found is not None else 0.0


def test_counts_wait_in_memory_and_are_written_whole(batching: None, registry: CollectorRegistry) -> None:
    counter = Counter("t_calls", "calls", ["model"], registry=registry)
    pending = metrics.PendingCounter(counter.labels("gpt-4.1"))

    for _ in range(5):
        pending.inc()
    pending.inc(2.5)

    assert value(registry, "t_calls_total", model="gpt-4.1") == 0, "held, not yet written"
    metrics.flush()
    assert value(registry, "t_calls_total", model="gpt-4.1") == 7.5
    metrics.flush()
    assert value(registry, "t_calls_total", model="gpt-4.1") == 7.5, "written once"


def test_a_histogram_ends_as_if_each_value_had_been_observed(batching: None, registry: CollectorRegistry) -> None:
    held = Histogram("t_held", "held", buckets=BUCKETS, registry=registry)
    direct = Histogram("t_direct", "direct", buckets=BUCKETS, registry=registry)
    pending = metrics.PendingHistogram(held, BUCKETS)
    values = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 120.0]

    for observed in values:
        pending.observe(observed)
        direct.observe(observed)
    assert value(registry, "t_held_count") == 0
    metrics.flush()

    for bound in ("0.001", "0.01", "0.1", "1.0", "+Inf"):
        assert value(registry, "t_held_bucket", le=bound) == value(registry, "t_direct_bucket", le=bound), bound
    assert value(registry, "t_held_count") == len(values)
    assert value(registry, "t_held_sum") == pytest.approx(sum(values))


def test_the_flusher_writes_within_its_interval(
    batching: None, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 0.05)
    monkeypatch.setattr(metrics, "_flusher_pid", None)  # a flusher of its own, at that interval
    pending = metrics.PendingCounter(Counter("t_flushed", "flushed", registry=registry))

    pending.inc()

    deadline = time.monotonic() + 5
    while value(registry, "t_flushed_total") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert value(registry, "t_flushed_total") == 1


def test_the_metrics_page_shows_this_workers_counts_at_once(batching: None) -> None:
    pending = observe._child(observe.REJECTIONS, "418", "test_teapot")
    before = observe.REJECTIONS.labels("418", "test_teapot")._value.get()

    pending.inc()

    text = observe.exposition()[0].decode()
    line = next(line for line in text.splitlines() if 'code="test_teapot"' in line)
    assert float(line.rsplit(" ", 1)[1]) == before + 1


def test_outside_gevent_bumps_go_straight_through(registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_batching", False)
    counter = metrics.PendingCounter(Counter("t_direct_calls", "calls", registry=registry))
    histogram = metrics.PendingHistogram(Histogram("t_direct_h", "h", buckets=BUCKETS, registry=registry), BUCKETS)

    counter.inc()
    histogram.observe(0.05)

    assert value(registry, "t_direct_calls_total") == 1
    assert value(registry, "t_direct_h_bucket", le="0.1") == 1


def test_a_histogram_of_another_shape_is_observed_value_by_value(
    batching: None, caplog: pytest.LogCaptureFixture
) -> None:
    class Reshaped:  # what a prometheus-client release that renamed its internals would give
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    child = Reshaped()
    with caplog.at_level(logging.WARNING, logger="config.metrics"):
        pending = metrics.PendingHistogram(child, BUCKETS)
    pending.observe(0.5)
    metrics.flush()

    assert child.seen == [0.5]
    assert "changed shape" in caplog.text
