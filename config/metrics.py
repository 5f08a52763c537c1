"""Prometheus counts bumped on the hot path: held in memory, written out once a second.

prometheus-client's multiprocess values take a lock, ask the kernel for the process id
and write the mmap file on every ``inc`` and ``observe``: about 25 times per call
(strace counted the ``getpid`` calls). Under gunicorn's gevent workers a bump here adds
to a number instead; what is pending goes to the metrics every ``FLUSH_SECONDS`` (from a
greenlet), before this process renders the metrics page, and at exit. So a worker's
counts reach ``/metrics`` within a second. Elsewhere (threads, Celery, tests) bumps go
straight through, as adding to a number is only safe where nothing runs in between.

Writing a histogram's pending buckets reaches into prometheus-client's private
``_buckets`` and ``_sum``; if a release changes them, observations go straight through
again, with a warning (pinned in requirements.txt).
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from config import background

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0

_pending: list[PendingCounter | PendingHistogram] = []  # the ones holding something
_flusher_pid: int | None = None
_batching: bool | None = None


def batching() -> bool:
    """Whether bumps are held: only under gevent's monkey-patching, where nothing else runs
    between reading and writing a pending number."""
    global _batching
    if _batching is None:
        _batching = background.gevent_patched()
    return _batching


class PendingCounter:
    """A labelled counter's child, bumped in memory."""

    __slots__ = ("amount", "child")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.amount = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if not batching():
            self.child.inc(amount)
        elif amount:
            if not self.amount:
                _hold(self)
            self.amount += amount

    def flush(self) -> None:
        amount, self.amount = self.amount, 0.0
        if amount:
            self.child.inc(amount)


class PendingHistogram:
    """A histogram (or its labelled child), its observations counted per bucket in memory."""

    __slots__ = ("bounds", "child", "counts", "direct", "held", "total")

    def __init__(self, child: Any, buckets: Sequence[float]) -> None:
        self.child = child
        self.bounds = [float(b) for b in buckets]
        if self.bounds[-1] != float("inf"):
            self.bounds.append(float("inf"))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.held = False
        self.direct = not _writable(child, len(self.bounds))

    def observe(self, value: float) -> None:
        if self.direct or not batching():
            self.child.observe(value)
            return
        if not self.held:
            self.held = True
            _hold(self)
        # prometheus counts a value in the first bucket whose bound is >= it.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        counts, total = self.counts, self.total
        self.counts, self.total, self.held = [0] * len(self.bounds), 0.0, False
        for bucket, count in zip(self.child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        if any(counts):
            self.child._sum.inc(total)


def _writable(child: Any, buckets: int) -> bool:
    found = getattr(child, "_buckets", None)
    ok = (
        isinstance(found, list)
        and len(found) == buckets
        and all(callable(getattr(b, "inc", None)) for b in found)
        and callable(getattr(getattr(child, "_sum", None), "inc", None))
    )
    if not ok:
        log.warning("metrics: prometheus-client's histogram has changed shape; observing each value as it comes")
    return ok


def _hold(pending: PendingCounter | PendingHistogram) -> None:
    _pending.append(pending)
    if _flusher_pid != os.getpid():
        _start_flusher()


def _start_flusher() -> None:
    global _flusher_pid
    _flusher_pid = os.getpid()
    background.start(_flush_every, name="metrics-flusher")  # safe from gevent's loop too


def _flush_every() -> None:
    pid = os.getpid()
    while _flusher_pid == pid:
        time.sleep(FLUSH_SECONDS)
        flush()


def flush() -> None:
    """Write every pending count to its metric."""
    global _pending
    held, _pending = _pending, []
    for pending in held:
        try:
            pending.flush()
        except Exception:
            log.exception("metrics: a pending count could not be written")


def _forget_in_child() -> None:
    # Counts the parent held are the parent's to write.
    global _pending, _flusher_pid
    for pending in _pending:
        if isinstance(pending, PendingCounter):
            pending.amount = 0.0
        else:
            pending.counts, pending.total, pending.held = [0] * len(pending.bounds), 0.0, False
    _pending, _flusher_pid = [], None


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(flush)
