"""A replica's graceful stop: the drain flag, and the SIGTERM handler that raises it.

An orchestrator stops a replica with SIGTERM (Kubernetes after the pod's ``preStop``
hook; ``docker stop``; ``make stack-down``). gunicorn's master passes it to every worker.
From that moment this worker is *draining*:

* ``/ready`` answers 503, so whatever probes readiness (kubelet, a load balancer that
  health-checks pods directly) stops sending it new work;
* a new call to the API is refused with a 503 that says to retry (``x-should-retry:
  true``): it never reached an upstream, so another replica may safely take it;
* calls already in flight, streams included, go on. After ``drain_seconds`` the worker
  hands over to gunicorn's own graceful exit: it stops accepting connections and waits
  up to ``graceful_timeout`` (counted from the SIGTERM) for the calls in flight.

``config/gunicorn.py`` installs the handler in each worker (``post_worker_init``). The
flag is per process and only ever goes up: a draining worker never serves again.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from config import background
from config.errors import ErrorCode, error_body

log = logging.getLogger(__name__)

_draining = False

_REFUSAL = json.dumps(
    error_body(
        "This Tollway replica is shutting down and takes no new calls; retry, and another replica will answer.",
        type="server_error",
        code=ErrorCode.DRAINING,
    )
).encode()
_REFUSAL_HEADERS = [
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(_REFUSAL))),
    ("Retry-After", "1"),
    # The openai SDK retries a 503 anyway; say so explicitly, since nothing was spent.
    ("x-should-retry", "true"),
]


def draining() -> bool:
    """Whether this process has been told to stop (SIGTERM) and takes no new calls."""
    return _draining


def drain_start() -> None:
    """Raise the drain flag: ``/ready`` turns 503 and new API calls are refused."""
    global _draining
    if not _draining:
        log.info("draining: SIGTERM received; /ready answers 503 and new calls are refused")
    _draining = True


def draining_refusal(start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI answer to a call that reaches a draining worker (``config/wsgi.py``)."""
    start_response("503 Service Unavailable", list(_REFUSAL_HEADERS))
    return [_REFUSAL]


def sigterm_handler_install(*, drain_seconds: float) -> None:
    """Put the drain in front of the SIGTERM handler this process already has.

    On SIGTERM the flag goes up at once; the handler that was there before (gunicorn's
    worker exit) runs ``drain_seconds`` later, or at once when that is 0. Only the
    public ``signal`` API is used, so a gunicorn upgrade cannot break it silently: if no
    Python handler is installed, the drain is skipped with a warning and SIGTERM keeps
    its default meaning.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        log.warning("draining: no SIGTERM handler to wrap (%r); graceful drain is off", previous)
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if _draining:
            return  # a second SIGTERM: already on the way out
        drain_start()
        if drain_seconds > 0:
            _call_later(drain_seconds, previous, signum, None)
        else:
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    # As gunicorn does: a SIGTERM must not interrupt a system call of a call in flight.
    signal.siginterrupt(signal.SIGTERM, False)


def _call_later(seconds: float, function: Callable[..., Any], *args: Any) -> None:
    """Run ``function`` after ``seconds`` without blocking the signal handler. gevent runs
    Python signal handlers inside its event loop, where starting a thread (even a patched
    one) would block; a greenlet timer does not."""
    if background.gevent_patched():
        import gevent

        gevent.spawn_later(seconds, function, *args)
        return
    timer = threading.Timer(seconds, function, args)
    timer.daemon = True
    timer.start()
