"""Socket waits that skip gevent's ``select.poll`` emulation, which is costly per call.

Under gevent, ``select.poll`` is an emulation that builds watchers and result objects on
every call. Three libraries on the request path call it per request, and py-spy put them
at about a fifth of a worker's CPU:

* httpcore, before it reuses a pooled upstream connection, and redis-py, before it hands
  out a pooled connection, ask "is this socket readable right now?" with ``poll(0)``.
  A zero-timeout poll(2) never blocks, so the real one is safe in a gevent worker;
  checks with a timeout keep gevent's.
* psycopg waits for every query's answer with ``poll``. Here it waits on one gevent io
  watcher instead, keeping ``psycopg.waiting.wait_poll``'s contract.

Installed by ``config/gunicorn.py`` once the worker is patched; without gevent, nothing
changes.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Generator
from typing import Any

_BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL


def install() -> bool:
    """Swap the two checks in; False (and nothing changed) when gevent has not patched select."""
    try:
        from gevent import monkey
    except ImportError:  # gevent is a production dependency, but the app runs without it
        return False
    if not monkey.is_module_patched("select"):
        return False
    real_poll = monkey.get_original("select", "poll")

    import httpcore._backends.sync as httpcore_sync
    import psycopg.waiting
    import redis._parsers.hiredis as redis_hiredis

    def ready(fd: Any) -> bool:
        poller = real_poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def is_socket_readable(sock: socket.socket | None) -> bool:
        fd = None if sock is None else sock.fileno()
        return True if fd is None or fd < 0 else ready(fd)  # a closed socket reads as EOF

    green_can_read = redis_hiredis._socket_can_read

    def socket_can_read(sock: Any, timeout: float) -> bool:
        if timeout != 0:
            return bool(green_can_read(sock, timeout))
        if hasattr(sock, "pending") and sock.pending():  # TLS bytes already decrypted
            return True
        return ready(sock)

    httpcore_sync.is_socket_readable = is_socket_readable
    redis_hiredis._socket_can_read = socket_can_read
    psycopg.waiting.wait = psycopg_wait(real_poll)
    return True


def psycopg_wait(real_poll: Callable[[], Any]) -> Callable[..., Any]:
    """``psycopg.waiting.wait`` for gevent: poll(0) first, else park on an io watcher.

    The contract is ``wait_poll``'s: ``gen`` yields what it waits for (read, write or
    both) and is sent what is ready, or nothing when ``interval`` passes idle; past
    ``timeout`` the wait raises psycopg's ``_WaitTimeout``.
    """
    from gevent.hub import _get_hub_noargs as get_hub
    from gevent.socket import wait as wait_on_watcher
    from psycopg import errors
    from psycopg.waiting import READY_NONE, READY_R, READY_W, WAIT_R, WAIT_W

    class Idle(Exception):
        pass

    def ready_now(fileno: int, wanted: int) -> int:
        poller = real_poll()
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
