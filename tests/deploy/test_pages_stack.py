"""The playground through nginx with TLS, in headless Chromium: the login cookie and the
CSRF check work behind the proxy, and the answer streams through it token by token."""

from __future__ import annotations

import re
from typing import Any

import pytest

from billing.models import UsageRecord
from tenants.models import Tenant
from tests.browser import TIMEOUT_MS, expect, log_in, needs_chromium, shot
from tests.conftest import Catalog
from tests.deploy.conftest import Stack, serve_model
from tests.pages import member

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True), needs_chromium]


def test_the_playground_streams_through_nginx(
    stack: Stack, catalog: Catalog, tenant: Tenant, mock_server: Any, browser: Any
) -> None:
    serve_model(catalog, "slow-stream", mock_server("--chunk-delay-ms", "100"))
    member(tenant, "olivia")
    # nginx's certificate comes from the stack's own test CA
    context = browser.new_context(base_url=stack.base, ignore_https_errors=True)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, "/chat/")
        page.get_by_label("Model").select_option("slow-stream")
        page.get_by_label("Message").fill("Hello through nginx")
        page.keyboard.press("Enter")
        answer = page.locator("#log .msg.assistant").last
        expect(answer.locator(".text")).to_contain_text("Mock answer")
        assert answer.get_attribute("aria-busy") == "true", "nginx delivered the answer all at once"
        expect(answer.locator(".meta")).to_contain_text(re.compile(r"\d+ in · \d+ out tokens · \$0\.\d+"))
        shot(page, "playground-nginx")
    finally:
        context.close()
    row = UsageRecord.objects.select_related("api_key__user").get(model__name="slow-stream")
    assert row.api_key is not None and row.api_key.user is not None and row.api_key.user.username == "olivia"
