"""config.logs: the console handler writes lines in batches, never loses or reorders one,
and writes a warning (and everything before it) at once."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.logs import BatchedStreamHandler


class CountingStream(io.StringIO):
    """A stream that counts its writes: each would be a syscall on a pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    found = logging.getLogger(f"tollway.test-logs.{time.monotonic_ns()}")
    found.propagate = False
    found.setLevel(logging.INFO)
    yield found
    for handler in list(found.handlers):
        found.removeHandler(handler)
        handler.close()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_burst_of_lines_is_one_write_made_by_the_flusher(logger: logging.Logger) -> None:
    stream = CountingStream()
    logger.addHandler(BatchedStreamHandler(stream, flush_seconds=0.5))

    for number in range(100):
        logger.info("request %d", number)

    assert stream.writes == 0, "lines wait for the flusher"
    deadline = time.monotonic() + 5
    while len(lines(stream)) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lines(stream) == [f"request {number}" for number in range(100)]
    assert stream.writes == 1, "the whole burst went out in one write"


def test_a_warning_is_written_at_once_after_the_lines_before_it(logger: logging.Logger) -> None:
    stream = CountingStream()
    logger.addHandler(BatchedStreamHandler(stream, flush_seconds=60))

    logger.info("first")
    logger.info("second")
    logger.warning("the ledger is unreachable")

    assert lines(stream) == ["first", "second", "the ledger is unreachable"]


def test_flush_and_shutdown_write_what_is_waiting(logger: logging.Logger) -> None:
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, flush_seconds=60)
    logger.addHandler(handler)

    logger.info("waiting")
    assert lines(stream) == []
    logging.shutdown([lambda: handler])  # what the process's exit runs

    assert lines(stream) == ["waiting"]


def test_zero_writes_each_line_as_it_comes(logger: logging.Logger) -> None:
    stream = CountingStream()
    logger.addHandler(BatchedStreamHandler(stream, flush_seconds=0))

    logger.info("one")
    logger.info("two")

    assert lines(stream) == ["one", "two"]
    assert stream.writes == 2


def test_a_forked_child_does_not_write_its_parents_lines_again(logger: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("w") as stream:
        handler = BatchedStreamHandler(stream, flush_seconds=60)
        logger.addHandler(handler)
        logger.info("held by the parent")

        pid = os.fork()
        if pid == 0:  # the child: a gunicorn worker or a Celery process after fork
            try:
                logger.info("the child's own")
                handler.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        handler.flush()

    assert sorted(path.read_text().splitlines()) == ["held by the parent", "the child's own"]


def test_the_console_handler_batches() -> None:
    handler = logging.getLogger("tollway.request").handlers[0]
    assert isinstance(handler, BatchedStreamHandler)
    assert 0 < handler.flush_seconds <= 1


def test_a_first_line_logged_from_gevents_loop_is_written_and_the_worker_lives() -> None:
    # gunicorn's SIGTERM handler runs in gevent's loop, and logs; a thread cannot be
    # started there (BlockingSwitchOutError killed the worker).
    program = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import logging, sys, gevent
        from config import metrics
        metrics.FLUSH_SECONDS = 0.05
        from config.logs import BatchedStreamHandler
        from prometheus_client import CollectorRegistry, Counter
        logger = logging.getLogger("worker")
        logger.addHandler(BatchedStreamHandler(sys.stdout, flush_seconds=0.05))
        logger.setLevel(logging.INFO)
        counter = Counter("t_loop", "from the loop", registry=CollectorRegistry())
        pending = metrics.PendingCounter(counter)
        def on_sigterm():
            logger.info("draining: SIGTERM received")
            pending.inc()
        gevent.get_hub().loop.run_callback(on_sigterm)
        gevent.sleep(0.5)  # the flushers run
        print("alive", counter._value.get())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["draining: SIGTERM received", "alive 1.0"]
    assert "BlockingSwitchOutError" not in result.stderr
