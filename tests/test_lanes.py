"""The test lanes (tests/lanes.py): skips are listed per lane at the end of a run, and a
lane that CI requires fails the run when it skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

CONFTEST = """
import pytest

pytest_plugins = ["tests.lanes"]


@pytest.fixture
def browser():
    pytest.skip("Debian's chromium is not installed")
"""

TESTS = """
import pytest


def test_fast():
    pass


def test_page(browser):
    pass


@pytest.mark.live
def test_server():
    pytest.skip("no gunicorn here")
"""


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    live: starts real gunicorn processes\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("TOLLWAY_REQUIRE_LANES", "DJANGO_SETTINGS_MODULE")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", *args],
        cwd=tmp_path,
        # No installed plugin (pytest-django and others): only the lanes, through the conftest.
        env={**clean, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_skips_are_listed_per_lane_with_their_reasons(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.returncode == 0, result.stdout
    summary = result.stdout.split("skipped lanes", 1)[1]
    assert "browser (drives headless Chromium): 1 skipped" in summary
    assert "1 x Debian's chromium is not installed" in summary
    assert "live (starts real gunicorn servers): 1 skipped" in summary
    assert "unit" not in summary.split("short test summary")[0]


def test_a_required_lane_that_skipped_fails_the_run(tmp_path: Path) -> None:
    result = run(tmp_path, TOLLWAY_REQUIRE_LANES="browser,deploy")
    assert result.returncode == 1, result.stdout
    assert "FAILED: 1 test(s) of the browser lane skipped, and TOLLWAY_REQUIRE_LANES requires it" in result.stdout
    # a lane that ran nothing at all is not a skip: deploy has no test here
    assert "deploy lane" not in result.stdout


def test_the_unit_lane_selects_what_needs_no_server_or_browser(tmp_path: Path) -> None:
    result = run(tmp_path, "-m", "unit", "-q")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 deselected" in result.stdout
