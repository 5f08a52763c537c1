"""The SIGTERM drain in one process: the flag goes up at once, the handler that was there
before runs after the drain. tests/e2e/test_graceful_stop.py does it with real gunicorn."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from config import lifecycle


@pytest.fixture
def sigterm_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """A stand-in for gunicorn's worker exit handler that records when it ran; the test
    process's own SIGTERM handling and drain flag are put back afterwards."""
    monkeypatch.setattr(lifecycle, "_draining", False)
    calls: list[float] = []

    def exit_handler(signum: int, frame: FrameType | None) -> None:
        calls.append(time.monotonic())

    original = signal.signal(signal.SIGTERM, exit_handler)
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, original)


def wait_for(calls: list[float], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_sigterm_raises_the_flag_at_once_and_exits_after_the_drain(sigterm_restored: list[float]) -> None:
    lifecycle.sigterm_handler_install(drain_seconds=0.3)
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    assert lifecycle.draining()
    assert sigterm_restored == []  # gunicorn's exit waits for the drain
    wait_for(sigterm_restored, 1)
    assert len(sigterm_restored) == 1 and sigterm_restored[0] - sent >= 0.3
    # a second SIGTERM changes nothing: the worker is already on its way out
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.4)
    assert len(sigterm_restored) == 1


def test_without_a_drain_gunicorns_exit_runs_at_once(sigterm_restored: list[float]) -> None:
    lifecycle.sigterm_handler_install(drain_seconds=0)
    os.kill(os.getpid(), signal.SIGTERM)
    assert lifecycle.draining()
    assert len(sigterm_restored) == 1


def test_no_handler_to_wrap_leaves_sigterm_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lifecycle, "_draining", False)
    original = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        lifecycle.sigterm_handler_install(drain_seconds=1)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, original)
    assert "graceful drain is off" in caplog.text
