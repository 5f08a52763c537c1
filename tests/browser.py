"""Headless Chromium for the web pages' tests: Debian's /usr/bin/chromium driven by
Playwright (which never downloads a browser here). Tests that use it carry
``needs_chromium``, so they skip, saying why, only where chromium is not installed."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from tests.conftest import ROOT
from tests.pages import PASSWORD

try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - requirements-dev.txt pins it
    sync_api = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) or sync_api is None,
    reason="Debian's chromium (apt-get install chromium) and the playwright package are needed",
)

# Under the lane's var/ (the PgBouncer lane runs the same tests beside the main one).
ARTIFACTS = settings.VAR_DIR / "test-artifacts"
DOCS = ROOT / "docs" / "screenshots"
TIMEOUT_MS = 15_000
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def expect(target: Any) -> Any:
    return sync_api.expect(target)


def shot(page: Any, name: str, *, publish: bool = True) -> None:
    """A full-page screenshot into var/test-artifacts/ (and docs/screenshots/ with
    UPDATE_SCREENSHOTS=1, unless it shows a secret: ``publish=False``)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if publish and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / path.name)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Playwright's sync API keeps an event loop running in this thread, and Django refuses
    # database calls in a thread with a running loop. The tests' queries are ordinary
    # blocking ones, so that guard is lifted while the browser is up.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    try:
        with sync_api.sync_playwright() as pw:
            launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            try:
                yield launched
            finally:
                launched.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def log_in(page: Any, path: str = "/dashboard/", username: str = "olivia") -> None:
    """Open ``path``, get sent to the login form, log in, and land back on ``path``."""
    page.goto(path)
    page.wait_for_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(re.escape(path) + "$"))
