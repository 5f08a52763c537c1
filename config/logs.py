"""The console log handler: lines written in batches, not one write per line.

The request log is a line per call (proxy/observe.py), and so is gunicorn's access log
(config/gunicorn.py). Written one at a time, each line is a write in the worker and a
wakeup of whatever reads the pipe (supervisord, the container runtime): supervisord alone
took 6 % of a core at 520 calls/s. Here a line waits at most
``TOLLWAY_LOG_FLUSH_SECONDS`` (or until 64 KiB are waiting); a warning or worse writes at
once, with everything before it, and so does the process's exit (an ``atexit`` hook).
0 writes every line as it comes, as ``logging.StreamHandler`` does.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
import weakref
from typing import TextIO

from config import background

DEFAULT_FLUSH_SECONDS = 0.2
MAX_PENDING_CHARS = 64 * 1024

_handlers: weakref.WeakSet[BatchedStreamHandler] = weakref.WeakSet()


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO | None = None, flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        self._pending: list[str] = []
        self._pending_chars = 0
        self._flusher_pid: int | None = None  # the process whose flusher runs
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.flush_seconds <= 0:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        self._pending_chars += len(line)
        if record.levelno >= logging.WARNING or self._pending_chars >= MAX_PENDING_CHARS:
            self._write_pending()
        elif self._flusher_pid != os.getpid():
            self._start_flusher()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock() set it
            self._write_pending()
            super().flush()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # as StreamHandler: a log that cannot be written must not fail the call
            self.handleError(logging.makeLogRecord({"msg": "log lines could not be written"}))

    def _start_flusher(self) -> None:
        # One per process, started by the first waiting line, wherever it was logged
        # (gunicorn's SIGTERM handler logs from gevent's loop).
        self._flusher_pid = os.getpid()
        background.start(_flush_every, weakref.ref(self), name="log-flusher")


def _flush_every(handler_ref: weakref.ref[BatchedStreamHandler]) -> None:
    pid = os.getpid()
    while (handler := handler_ref()) is not None and handler._flusher_pid == pid:
        interval = handler.flush_seconds
        del handler  # not kept alive while asleep
        time.sleep(interval)
        if (handler := handler_ref()) is not None:
            handler.flush()
        del handler


def _forget_in_child() -> None:
    # Lines the parent held are the parent's to write; the child starts its own flusher.
    for handler in list(_handlers):
        handler._pending = []
        handler._pending_chars = 0
        handler._flusher_pid = None


def _flush_all() -> None:
    # logging.shutdown flushes only the handlers logging still lists, and a dictConfig
    # (Django's LOGGING, loaded in each gunicorn worker) unlists those made before it:
    # gunicorn's access log handler, made in the master.
    for handler in list(_handlers):
        with contextlib.suppress(OSError, ValueError):  # a stream closed already, as logging.shutdown allows
            handler.flush()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_flush_all)  # after the imports of logging: it runs before logging.shutdown
