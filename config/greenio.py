"""Socket waits (and sends) that skip gevent's emulations, which are costly per call.

Under gevent, ``select.poll`` is an emulation that builds watchers and result objects on
every call. Three libraries on the request path call it per request, and py-spy put them
at about a fifth of a worker's CPU:

* redis-py, before it hands out a pooled connection, asks "is this socket readable right
  now?" with ``poll(0)``. A zero-timeout poll(2) never blocks, so the real one is safe in
  a gevent worker; checks with a timeout keep gevent's. (``proxy.http11`` asks the same
  of an idle upstream connection with the real poll itself.)
* psycopg waits for every query's answer with ``poll``. Here it waits on one gevent io
  watcher instead, keeping ``psycopg.waiting.wait_poll``'s contract.

And gevent's ``sendall``, which asks the kernel for the socket's send buffer size
(``getsockopt``) and reads the clock before every send, however small: a relayed SSE
chunk, a Redis command, the answer to a call. Here a send that fits goes out in one
``send``; only what did not fit takes gevent's own path (TLS sockets keep theirs).

And one rule for Redis's short timeouts: a worker saturated by a burst can wake a
greenlet after its timer although Redis's answer is already there. A read that times out
while its socket holds the answer reads it (``tollway_redis_late_wakeups_total`` counts
them); only a socket with nothing to read has timed out, since a false timeout is taken
for an outage and sends a second of the worker's calls to the Postgres fallbacks.

Installed by ``config/gunicorn.py`` once the worker is patched; without gevent, nothing
changes. Each patch first checks that what it replaces is there with the signature it
expects; if a library release changed it, that patch is skipped with a warning and the
library keeps its own (slower, correct) behaviour. Nothing here can stop a worker booting.
"""

from __future__ import annotations

import functools
import inspect
import logging
import select
import time
from collections.abc import Callable, Generator
from types import ModuleType
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)

_BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL

LATE_WAKEUPS = Counter(
    "tollway_redis_late_wakeups_total",
    "Redis answers that came in time but woke their greenlet after the socket timeout (a busy worker)",
)


class ShapeChanged(Exception):
    """What a patch replaces is not what it was written against."""


def install() -> tuple[str, ...]:
    """Swap the checks in; the names of the patches applied, none when gevent has not
    patched select. A patch whose target changed shape is skipped with a warning."""
    try:
        from gevent import monkey
    except ImportError:  # gevent is a production dependency, but the app runs without it
        return ()
    if not monkey.is_module_patched("select"):
        return ()
    patches: dict[str, Callable[[], None]] = {
        "redis": _patch_redis,
        "psycopg": _patch_psycopg,
        "sendall": _patch_sendall,
    }
    applied = []
    for name, patch in patches.items():
        try:
            patch()
        except Exception as exc:  # a changed library, or a patch gone wrong: never fatal
            log.warning(
                "greenio: %s patch skipped, keeping %s's own behaviour (slower, correct): %s. "
                "Pin the version requirements.txt was tested with, or update config/greenio.py.",
                name,
                name,
                exc,
            )
        else:
            applied.append(name)
    return tuple(applied)


def _expect(module: ModuleType | type, name: str, params: tuple[str, ...]) -> Callable[..., Any]:
    """``module.name``, if it is a function whose parameters start with ``params``."""
    found = getattr(module, name, None)
    if not callable(found):
        raise ShapeChanged(f"{module.__name__}.{name} is missing")
    try:
        names = tuple(inspect.signature(found).parameters)
    except (TypeError, ValueError) as exc:
        raise ShapeChanged(f"{module.__name__}.{name}'s signature cannot be read") from exc
    if names[: len(params)] != params:
        raise ShapeChanged(f"{module.__name__}.{name} takes ({', '.join(names)}), not ({', '.join(params)})")
    return found


@functools.cache
def real_poll() -> Callable[[], Any]:
    """``select.poll`` as the OS gives it: a zero-timeout poll never blocks, and gevent's
    emulation builds watchers on every call."""
    try:
        from gevent import monkey
    except ImportError:
        return select.poll
    if monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return select.poll


def readable_now(sock: Any) -> bool:
    """Whether ``sock`` has something to read (bytes, an end or an error) right now,
    without waiting or switching greenlets. A TLS socket may hold decrypted bytes the OS
    no longer shows."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    poller = real_poll()()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _patch_sendall() -> None:
    from gevent import _socket3

    cls = _socket3.socket
    if getattr(cls.sendall, "_tollway", False):
        return  # installed already
    gevent_sendall = _expect(cls, "sendall", ("self", "data", "flags"))
    if not any("_sock" in getattr(klass, "__slots__", ()) for klass in cls.__mro__):
        raise ShapeChanged("gevent's socket no longer holds its OS socket in _sock")

    def sendall(self: Any, data: Any, flags: int = 0) -> None:
        if type(self) is cls and type(data) is bytes and data:  # a TLS socket is a subclass
            try:
                sent = self._sock.send(data, flags)  # the OS socket, non-blocking
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        gevent_sendall(self, data, flags)

    sendall._tollway = True  # type: ignore[attr-defined]
    cls.sendall = sendall


def _patch_redis() -> None:
    import redis._parsers.hiredis as redis_hiredis
    from redis.exceptions import TimeoutError as RedisTimeoutError

    green_can_read = _expect(redis_hiredis, "_socket_can_read", ("sock", "timeout"))
    parser = getattr(redis_hiredis, "_HiredisParser", None)
    if not isinstance(parser, type):
        raise ShapeChanged("redis._parsers.hiredis._HiredisParser is missing")
    read_from_socket = _expect(parser, "read_from_socket", ("self", "timeout", "raise_on_timeout"))

    def read_in_time(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A busy worker can wake a greenlet after its timeout although the answer came:
        # its wait was the other greenlets' CPU, not Redis. Only a socket that still has
        # nothing to read timed out.
        try:
            return read_from_socket(self, *args, **kwargs)
        except RedisTimeoutError:
            sock = self._sock
            if sock is None or not readable_now(sock):
                raise
            LATE_WAKEUPS.inc()
            return read_from_socket(self, *args, **kwargs)

    setattr(parser, "read_from_socket", read_in_time)  # noqa: B010 (a class found at run time)

    def socket_can_read(sock: Any, timeout: float) -> bool:
        if timeout != 0:
            return bool(green_can_read(sock, timeout))
        return readable_now(sock)

    redis_hiredis._socket_can_read = socket_can_read


def _patch_psycopg() -> None:
    import psycopg.errors
    import psycopg.waiting

    _expect(psycopg.waiting, "wait", ("gen", "fileno", "interval", "timeout"))
    for name in ("READY_NONE", "READY_R", "READY_W", "WAIT_R", "WAIT_W"):
        if not hasattr(psycopg.waiting, name):
            raise ShapeChanged(f"psycopg.waiting.{name} is missing")
    if not isinstance(getattr(psycopg.errors, "_WaitTimeout", None), type):
        raise ShapeChanged("psycopg.errors._WaitTimeout is missing")
    psycopg.waiting.wait = psycopg_wait()


def psycopg_wait() -> Callable[..., Any]:
    """``psycopg.waiting.wait`` for gevent: poll(0) first, else park on an io watcher.

    The contract is ``wait_poll``'s: ``gen`` yields what it waits for (read, write or
    both) and is sent what is ready, or nothing when ``interval`` passes idle; past
    ``timeout`` the wait raises psycopg's ``_WaitTimeout``.
    """
    from gevent import get_hub
    from gevent.socket import wait as wait_on_watcher
    from psycopg import errors
    from psycopg.waiting import READY_NONE, READY_R, READY_W, WAIT_R, WAIT_W

    poll = real_poll()

    class Idle(Exception):
        pass

    def ready_now(fileno: int, wanted: int) -> int:
        poller = poll()
        poller.register(fileno, (select.POLLIN if wanted & WAIT_R else 0) | (select.POLLOUT if wanted & WAIT_W else 0))
        ready = int(READY_NONE)
        for _, events in poller.poll(0):
            if events & select.POLLIN:
                ready |= READY_R
            if events & select.POLLOUT:
                ready |= READY_W
            if not ready and events & _BAD:
                raise errors.OperationalError("connection socket closed")
        return ready

    def wait(gen: Generator[Any, Any, Any], fileno: int, interval: float = 0.0, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = get_hub().loop
        try:
            wanted = next(gen)
            while True:
                ready = ready_now(fileno, wanted)
                if not ready:
                    pause = max(interval, 0.0)
                    if deadline is not None:
                        pause = max(min(pause, deadline - time.monotonic()), 0.0)
                    watcher = loop.io(fileno, (1 if wanted & WAIT_R else 0) | (2 if wanted & WAIT_W else 0))
                    try:
                        wait_on_watcher(watcher, pause, Idle)
                        ready = ready_now(fileno, wanted)
                    except Idle:
                        pass
                    finally:
                        watcher.close()
                wanted = gen.send(ready)
                if deadline is not None and time.monotonic() >= deadline:
                    raise errors._WaitTimeout("wait timeout expired")
        except StopIteration as done:
            return done.value

    return wait
