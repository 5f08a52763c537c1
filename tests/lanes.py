"""Test lanes: every test is sorted into lanes by where it lives and what it uses, so no
test file has to say (a pytest plugin, loaded by ``tests/conftest.py``).

* ``deploy``: ``tests/deploy/``, the local stack through real nginx (and supervisord);
* ``faults``: ``tests/faults/``, dependencies killed or hung on purpose;
* ``browser``: tests that drive headless Chromium (the ``browser`` fixture);
* ``live``: tests that start real gunicorn servers (marked ``live``, or in ``tests/e2e/``);
* ``unit``: everything else, in-process against real Postgres and Redis. ``make test-fast``
  runs this lane (``pytest -m unit``); ``make test`` runs them all.

A test may be in several lanes (a browser test through nginx is deploy, browser and live).
At the end of a run, the skipped tests are listed per lane with their reasons. Lanes named
in ``TOLLWAY_REQUIRE_LANES`` (``.ci/run`` sets ``browser,deploy``) must not skip: if one
does, the run fails, so CI cannot go green without the browser or nginx having run.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

LANES = {
    "unit": "in-process tests against real Postgres and Redis (make test-fast)",
    "live": "starts real gunicorn servers",
    "browser": "drives headless Chromium",
    "deploy": "the local stack through real nginx (tests/deploy/)",
    "faults": "dependencies killed or hung on purpose (tests/faults/)",
}
TESTS = Path(__file__).resolve().parent
DIRECTORIES = {"deploy": TESTS / "deploy", "faults": TESTS / "faults", "live": TESTS / "e2e"}

_lanes: dict[str, list[str]] = {}
_skipped: dict[str, list[tuple[str, str]]] = defaultdict(list)


def lanes_of(item: pytest.Item) -> list[str]:
    path = Path(str(item.path)).resolve()
    found = [lane for lane, directory in DIRECTORIES.items() if directory in path.parents]
    if "browser" in getattr(item, "fixturenames", ()):
        found.append("browser")
    if item.get_closest_marker("live") is not None and "live" not in found:
        found.append("live")
    return found or ["unit"]


def required_lanes() -> set[str]:
    return {lane.strip() for lane in os.environ.get("TOLLWAY_REQUIRE_LANES", "").split(",") if lane.strip()}


def pytest_configure(config: pytest.Config) -> None:
    for lane, what in LANES.items():
        if lane != "live":  # registered in pyproject.toml
            config.addinivalue_line("markers", f"{lane}: {what}")
    unknown = required_lanes() - set(LANES)
    if unknown:
        raise pytest.UsageError(f"TOLLWAY_REQUIRE_LANES names unknown lanes: {', '.join(sorted(unknown))}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        lanes = lanes_of(item)
        _lanes[item.nodeid] = lanes
        for lane in lanes:
            item.add_marker(lane)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped or report.when == "teardown":
        return
    longrepr: Any = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    for lane in _lanes.get(report.nodeid, ["unit"]):
        _skipped[lane].append((report.nodeid, reason))


def missing_required() -> dict[str, int]:
    return {lane: len(_skipped[lane]) for lane in sorted(required_lanes()) if _skipped.get(lane)}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if missing_required() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _skipped:
        return
    terminalreporter.section("skipped lanes")
    for lane in LANES:
        if not _skipped.get(lane):
            continue
        reasons: dict[str, int] = defaultdict(int)
        for _, reason in _skipped[lane]:
            reasons[reason] += 1
        terminalreporter.write_line(f"{lane} ({LANES[lane]}): {len(_skipped[lane])} skipped")
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"    {count} x {reason}")
    for lane, count in missing_required().items():
        terminalreporter.write_line(
            f"FAILED: {count} test(s) of the {lane} lane skipped, and TOLLWAY_REQUIRE_LANES requires it to run",
            red=True,
            bold=True,
        )
