"""The web pages in a real browser: Debian's headless Chromium driven by Playwright,
against gunicorn serving as production does, with the loopback mock upstream.

Screenshots land in var/test-artifacts/ (and docs/screenshots/ when UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billing.models import Invoice, UsageRecord
from tenants import services
from tenants.models import ApiKey, Tenant
from tests.browser import ARTIFACTS, TIMEOUT_MS, expect, log_in, needs_chromium, shot
from tests.conftest import ROOT, UPSTREAM_KEY, Catalog, Upstream, free_port, stop, wait_for_http
from tests.e2e.conftest import serve
from tests.pages import issued_invoice, member, spend_history

pytestmark = [pytest.mark.live, needs_chromium]


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[Upstream]:
    """The mock upstream pacing each streamed chunk, so a stream can be watched and stopped."""
    port = free_port()
    command = [sys.executable, "-m", "tests.mockupstream", "--port", str(port), "--api-key", UPSTREAM_KEY]
    proc = subprocess.Popen(
        [*command, "--chunk-delay-ms", "150"],
        cwd=ROOT,
    )
    wait_for_http(f"http://127.0.0.1:{port}/health", proc=proc)
    try:
        yield Upstream(base_url=f"http://127.0.0.1:{port}/v1", port=port)
    finally:
        stop(proc)


@pytest.fixture
def site(production_env: dict[str, str], catalog: Catalog, slow_upstream: Upstream, tenant: Tenant) -> Iterator[str]:
    key = services.api_key_create(tenant=tenant, name="backend").api_key
    spend_history(tenant, list(catalog.models.values()), key)
    catalog.add_http_model("gpt-4.1-stream", slow_upstream, "gpt-4.1", prices=("8", "32"))
    issued_invoice(tenant, catalog.models["gpt-4.1"])
    member(tenant, "olivia")
    # Plain HTTP on loopback: the cookies may not be Secure-only here (nginx serves TLS).
    env = {**production_env, "WEB_CONCURRENCY": "1", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0"}
    proc, base = serve(env)
    try:
        yield base
    finally:
        stop(proc)


@pytest.fixture
def page(browser: Any, site: str) -> Iterator[Any]:
    context = browser.new_context(base_url=site, accept_downloads=True, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "last-page.png"), full_page=True)  # for a failure's post-mortem
        context.close()


def test_log_in_and_see_the_dashboard(page: Any) -> None:
    log_in(page)
    expect(page.get_by_role("heading", name="Acme Corp")).to_be_visible()
    # the chart has stacked bars for both models, and a legend naming them
    assert page.locator("svg.chart rect.bar").count() >= 12
    expect(page.get_by_role("list", name="Models")).to_contain_text("deepseek-v3")
    expect(page.get_by_test_id("spend")).not_to_have_text("$0.00")
    shot(page, "dashboard")
    page.get_by_role("link", name="90 days").click()
    expect(page.get_by_role("heading", name="Daily spend, last 90 days")).to_be_visible()
    page.set_viewport_size({"width": 390, "height": 844})
    # phone width: wide tables scroll inside their box; the page itself does not scroll sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "dashboard-phone")


def test_download_an_invoice_pdf(page: Any) -> None:
    number = Invoice.objects.exclude(number=None).values_list("number", flat=True).get()
    log_in(page)
    with page.expect_download() as info:
        page.get_by_role("link", name=f"Download {number} (PDF)").click()
    download = info.value
    assert download.suggested_filename.endswith(".pdf")
    assert Path(download.path()).read_bytes().startswith(b"%PDF")


def test_create_and_revoke_a_key(page: Any) -> None:
    log_in(page)
    page.get_by_label("New key name").fill("ci-deploy")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("The new API key").inner_text().strip()
    assert secret.startswith("tlw_")
    shot(page, "key-created", publish=False)  # it shows a key's secret
    key = ApiKey.objects.get(name="ci-deploy")
    assert key.secret_hash not in secret  # only the hash is stored

    page.get_by_role("link", name="Back to the dashboard").click()
    row = page.locator(f'tr[data-key="{key.key_id}"]')
    expect(row).to_contain_text("Active")
    assert secret not in page.content()  # shown once only
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke ci-deploy").click()
    expect(page.locator(f'tr[data-key="{key.key_id}"]')).to_contain_text("Revoked")
    key.refresh_from_db()
    assert key.revoked_at is not None


def chat_page(page: Any) -> None:
    log_in(page, "/chat/")
    page.get_by_label("Model").select_option("gpt-4.1-stream")
    page.get_by_label("System prompt").fill("You are terse.")


def test_send_a_message_and_see_it_stream(page: Any) -> None:
    chat_page(page)
    page.get_by_label("Message").fill("Hello, Tollway!")
    page.keyboard.press("Enter")  # Enter sends, from the keyboard alone
    answer = page.locator("#log .msg.assistant").last
    # while it streams, part of the answer is already on screen
    expect(answer).to_have_attribute("aria-busy", "true")
    expect(answer.locator(".text")).to_contain_text("Mock answer")
    partial = answer.locator(".text").inner_text()
    assert answer.get_attribute("aria-busy") == "true", "the answer arrived all at once, not streamed"
    # then it ends with its tokens and cost
    expect(answer.locator(".meta")).to_contain_text(re.compile(r"\d+ in · \d+ out tokens · \$0\.\d+"))
    assert len(answer.locator(".text").inner_text()) > len(partial)
    shot(page, "playground")

    row = UsageRecord.objects.select_related("api_key__user").filter(model__name="gpt-4.1-stream").get()
    assert row.api_key is not None and row.api_key.user is not None
    assert row.api_key.user.get_username() == "olivia"  # billed to the tenant, naming the user
    assert str(row.cost) in answer.locator(".meta").inner_text()


def test_stop_a_stream_and_it_is_still_metered(page: Any) -> None:
    chat_page(page)
    page.get_by_label("Message").fill("Tell me a long story.")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("#log .msg.assistant").last
    expect(answer.locator(".text")).to_contain_text("Mock answer")
    page.get_by_role("button", name="Stop").click()
    expect(answer.locator(".meta")).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    shot(page, "playground-stopped")
    # the call is billed even though the client left (measured or estimated usage)
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(model__name="gpt-4.1-stream").exists():
        assert time.monotonic() < deadline, "the stopped stream was never metered"
        time.sleep(0.1)
    row = UsageRecord.objects.get(model__name="gpt-4.1-stream")
    assert row.outcome == UsageRecord.Outcome.CLIENT_GONE
    assert row.streamed and row.cost > 0
