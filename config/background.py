"""A loop that runs beside the process's work: a greenlet under gevent, a daemon thread
otherwise.

Under gevent, ``threading.Thread.start`` waits for the new thread to signal that it
started; from the event loop (a signal handler, such as gunicorn's SIGTERM one) that
wait is refused (``BlockingSwitchOutError``) and the worker dies. ``gevent.spawn`` only
schedules the greenlet, so it may be called from anywhere, the loop included.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any


def gevent_patched() -> bool:
    """Whether gevent's monkey-patching runs this process (a gunicorn gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def start(target: Callable[..., Any], *args: Any, name: str) -> None:
    if gevent_patched():
        import gevent

        gevent.spawn(target, *args).name = name
        return
    threading.Thread(target=target, args=args, name=name, daemon=True).start()
