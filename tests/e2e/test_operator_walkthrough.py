"""The operator's order of work (docs/operators/order-of-work.md), clicked through the admin
in a real browser at 1280 px, then the new tenant user's dashboard pages
(docs/tenants/dashboard.md). It saves the screenshots those pages show: run with
UPDATE_SCREENSHOTS=1 to refresh docs/screenshots/.

Served as ``make run`` serves (gunicorn, DEBUG on so the admin's own CSS is served), with
the loopback mock upstream standing in for the provider.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.utils import timezone

from billing.models import Model, UsageRecord
from tenants.models import ApiKey, Membership, Tenant
from tests.browser import ARTIFACTS, TIMEOUT_MS, expect, needs_chromium, shot
from tests.conftest import UPSTREAM_KEY_ENV, Upstream, stop
from tests.e2e.conftest import serve
from tests.pages import PASSWORD

pytestmark = [pytest.mark.live, needs_chromium]

WIDTH = 1280


@pytest.fixture
def site(production_env: dict[str, str]) -> Iterator[str]:
    admin = User.objects.create_superuser("admin", "admin@example.com")
    admin.password = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt(), iterations=1000)
    admin.save(update_fields=["password"])
    # As `make run` serves it: DEBUG on, so the admin's CSS and scripts are served too.
    env = {**production_env, "DEBUG": "1", "WEB_CONCURRENCY": "1"}
    env |= {"SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0"}
    proc, base = serve(env)
    try:
        yield base
    finally:
        stop(proc)


@pytest.fixture
def context(browser: Any, site: str) -> Iterator[Any]:
    context = browser.new_context(base_url=site, viewport={"width": WIDTH, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        for page in context.pages:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "last-page.png"), full_page=True)
        context.close()


def fits(page: Any) -> None:
    """Nothing sticks out past 1280 px: neither the page nor a list's or inline's table."""
    widest = page.evaluate(
        "Math.max(document.documentElement.scrollWidth, ...[...document.querySelectorAll("
        "'#result_list, .inline-group table, #content-main table')].map(t => t.getBoundingClientRect().right))"
    )
    assert widest <= WIDTH, f"{page.url} is {widest} px wide"


def save(page: Any) -> None:
    page.locator("input[name=_save]").click()
    page.wait_for_load_state()
    expect(page.locator(".errornote")).to_have_count(0)


def autocomplete(page: Any, select_id: str, text: str) -> None:
    """Pick ``text`` in one of the admin's autocomplete (select2) boxes."""
    page.locator(f"#{select_id} + .select2 .select2-selection").click()
    page.locator(".select2-container--open .select2-search__field").fill(text)
    page.locator(".select2-results__option", has_text=text).first.click()


def add_row(page: Any, group: str) -> None:
    page.locator(f"#{group}-group .add-row a").click()


def test_the_operators_steps_then_the_tenants_dashboard(
    context: Any, site: str, mock_upstream: Upstream, sdk: Any
) -> None:
    page = context.new_page()
    # 0. log in to the admin
    page.goto("/admin/")
    page.locator("#id_username").fill("admin")
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#site-name")).to_have_text("Tollway administration")
    fits(page)

    # 1. a provider: OpenAI-compatible, its key named by an environment variable
    page.goto("/admin/proxy/provider/add/")
    page.locator("#id_name").fill("openai")
    page.locator("#id_kind").select_option("openai")
    page.locator("#id_base_url").fill(mock_upstream.base_url)
    page.locator("#id_api_key_env").fill(UPSTREAM_KEY_ENV)
    fits(page)
    shot(page, "operator-1-provider")
    save(page)
    expect(page.locator("#result_list")).to_contain_text("openai")
    fits(page)

    # 2. a model and its price (an empty start means now)
    page.goto("/admin/billing/model/add/")
    page.locator("#id_name").fill("gpt-4.1-mini")
    page.locator("#id_owned_by").fill("openai")
    add_row(page, "prices")
    page.locator("#id_prices-0-input_per_mtok").fill("0.40")
    page.locator("#id_prices-0-output_per_mtok").fill("1.60")
    page.locator("#id_prices-0-cached_input_per_mtok").fill("0.10")
    fits(page)
    shot(page, "operator-2-model")
    page.locator("input[name=_continue]").click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    model = Model.objects.get(name="gpt-4.1-mini")
    assert model.prices.get().input_per_mtok == Decimal("0.40")

    # 3. a deployment, on the model's page
    add_row(page, "deployments")
    autocomplete(page, "id_deployments-0-provider", "openai")
    page.locator("#id_deployments-0-upstream_model").fill("gpt-4.1-mini-2025-04-14")
    fits(page)
    shot(page, "operator-3-deployment")
    save(page)
    assert model.deployments.get().upstream_model == "gpt-4.1-mini-2025-04-14"

    # 4. a tenant
    page.goto("/admin/tenants/tenant/add/")
    page.locator("#id_slug").fill("acme")
    page.locator("#id_name").fill("Acme Corp")
    page.locator("#id_billing_email").fill("billing@acme.example")
    page.locator("#id_monthly_budget_usd").fill("100")
    fits(page)
    shot(page, "operator-4-tenant")
    save(page)
    tenant = Tenant.objects.get(slug="acme")
    expect(page.locator("#result_list")).to_contain_text("$100.00")  # money to the cent in lists
    fits(page)

    # 5. an API key: its secret is shown once
    page.goto("/admin/tenants/apikey/add/")
    page.locator("#id_tenant").select_option(label=str(tenant))
    page.locator("#id_name").fill("production")
    save(page)
    notice = page.locator(".messagelist .warning").inner_text()
    secret = re.search(r"tlw_\S+", notice)
    assert secret is not None, notice
    expect(page.locator("#result_list")).to_contain_text("inference")  # scopes as words, not JSON
    fits(page)
    shot(page, "operator-5-key")

    # 6. a user of the tenant, with an e-mail address and a membership
    page.goto("/admin/auth/user/add/")
    page.locator("#id_username").fill("olivia")
    page.locator("#id_email").fill("olivia@acme.example")
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    add_row(page, "membership")
    autocomplete(page, "id_membership-0-tenant", "acme")
    page.locator("#id_membership-0-role").select_option("owner")
    fits(page)
    shot(page, "operator-6-user")
    save(page)
    assert Membership.objects.get(user__username="olivia").tenant == tenant

    # Check it works: a call with the key, billed at the price from step 2
    answer = sdk(site, secret.group(0)).chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content
    row = UsageRecord.objects.get(tenant=tenant)
    assert row.input_price_per_mtok == Decimal("0.40")

    # that price is billed now: read-only, and "Schedule a new price" is the way to change it
    page.goto(f"/admin/billing/model/{model.pk}/change/")
    expect(page.locator("#prices-group")).to_contain_text("billed (read-only)")
    expect(page.locator("#id_prices-0-input_per_mtok")).to_be_disabled()
    fits(page)
    shot(page, "operator-7-price-billed")
    page.get_by_role("link", name="Schedule a new price").click()
    tomorrow = (timezone.now() + timedelta(days=1)).date()
    page.locator("#id_effective_from_0").fill(tomorrow.isoformat())
    page.locator("#id_effective_from_1").fill("00:00:00")
    page.locator("#id_input_per_mtok").fill("0.30")
    page.locator("#id_output_per_mtok").fill("1.20")
    save(page)
    assert model.prices.count() == 2
    page.goto("/admin/billing/usagerecord/")
    fits(page)

    # The tenant's user: the request log, the prices, a key with limits
    user = context.browser.new_context(base_url=site, viewport={"width": WIDTH, "height": 900}).new_page()
    user.set_default_timeout(TIMEOUT_MS)
    try:
        tenant_pages(user)
    finally:
        user.context.close()


def tenant_pages(page: Any) -> None:
    page.goto("/dashboard/requests/")
    page.get_by_label("Username").fill("olivia")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/dashboard/requests/$"))
    expect(page.locator("#requests tbody tr")).to_have_count(1)
    page.get_by_label("Model").select_option("gpt-4.1-mini")
    page.get_by_label("Outcome").select_option("completed")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#requests")).to_contain_text("production")
    shot(page, "dashboard-requests")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download these requests as CSV").click()
    lines = open(info.value.path(), encoding="utf-8").read().splitlines()  # noqa: SIM115
    assert len(lines) == 2 and "gpt-4.1-mini" in lines[1]

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Prices").click()
    row = page.locator('tr[data-model="gpt-4.1-mini"]')
    expect(row).to_contain_text("$0.40")
    expect(row).to_contain_text("$0.30 / $1.20")  # the change scheduled in the admin
    shot(page, "dashboard-prices")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").click()
    page.get_by_label("New key name").fill("ci")
    page.get_by_text("Expiry, limits, budget and models (optional)").click()
    page.get_by_label("Expires on").fill("2099-12-31")
    page.get_by_label("Requests per minute").fill("60")
    page.get_by_label("Monthly budget (USD)").fill("25")
    page.get_by_label("Allowed models").fill("gpt-4.1*")
    page.locator("#keys").scroll_into_view_if_needed()
    shot(page, "dashboard-new-key")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_label("The new API key")).to_contain_text("tlw_")
    key = ApiKey.objects.get(name="ci")
    assert (key.rpm_limit, key.monthly_budget_usd, key.allowed_models) == (60, Decimal(25), ["gpt-4.1*"])
    assert key.expires_at is not None and key.expires_at.year == 2099
