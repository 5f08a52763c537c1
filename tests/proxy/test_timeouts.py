"""Per-provider timeouts: connect, first byte, idle gap between chunks, and total."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from billing.models import Model, Price, UsageRecord
from proxy import route
from proxy.models import Deployment, Provider
from proxy.route import Timeouts
from tests.conftest import UPSTREAM_KEY_ENV, Api, Catalog, Upstream, free_port, sse_events, user

pytestmark = pytest.mark.django_db


def serve(name: str, upstream_model: str, base_url: str, **timeouts: float) -> None:
    provider = Provider.objects.create(
        name=f"p-{name}", kind=Provider.Kind.OPENAI, base_url=base_url, api_key_env=UPSTREAM_KEY_ENV, **timeouts
    )
    model = Model.objects.create(name=name)
    Price.objects.create(model=model, input_per_mtok=Decimal("1"), output_per_mtok=Decimal("1"))
    Deployment.objects.create(model=model, provider=provider, upstream_model=upstream_model)


def test_defaults_come_from_settings_and_a_provider_overrides_them(catalog: Catalog, mock_upstream: Upstream) -> None:
    assert Timeouts.defaults() == Timeouts(connect=5.0, first_byte=120.0, idle=60.0, total=600.0)
    serve("patient", "gpt-4.1", mock_upstream.base_url, first_byte_timeout=2.5)
    assert route.resolve("patient").target.limits == Timeouts(connect=5.0, first_byte=2.5, idle=60.0, total=600.0)


def test_first_byte_timeout_is_a_504_and_bills_nothing(api: Api, catalog: Catalog, mock_upstream: Upstream) -> None:
    serve("hang", "mock-hang", mock_upstream.base_url, first_byte_timeout=0.2)
    started = time.monotonic()
    response = api.chat({"model": "hang", "messages": user("hi")})
    assert time.monotonic() - started < 0.9  # the upstream would have answered after 1 s
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert not UsageRecord.objects.exists()


def test_connect_timeout_or_refusal_is_an_openai_error(api: Api, catalog: Catalog) -> None:
    serve("nowhere", "x", f"http://127.0.0.1:{free_port()}/v1", connect_timeout=0.2)
    response = api.chat({"model": "nowhere", "messages": user("hi")})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize("limits", [{"idle_timeout": 0.01}, {"total_timeout": 0.3}])
def test_a_stream_that_stalls_or_runs_too_long_ends_with_an_error_event_and_is_billed(
    api: Api, catalog: Catalog, mock_upstream: Upstream, limits: dict[str, float]
) -> None:
    # mock-slow sends a chunk every 50 ms for about two seconds
    serve("slow", "mock-slow", mock_upstream.base_url, **limits)
    events = sse_events(api.chat({"model": "slow", "messages": user("take your time"), "stream": True}))
    assert events[-1]["error"]["code"] == "upstream_timeout"
    assert "[DONE]" not in events
    row = UsageRecord.objects.get()
    assert row.outcome == UsageRecord.Outcome.UPSTREAM_ERROR and row.usage_estimated and row.cost > 0
