"""The response cache: opt-in, exact, per tenant, with a TTL; hits replay as SSE and are
recorded in the ledger as cache hits at the hit price."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
from django.conf import LazySettings
from django.test import Client

from billing.models import UsageRecord
from tenants.cache import principals
from tests.conftest import Api, Catalog, Upstream, sse_events, user
from tests.openapi import validate

pytestmark = pytest.mark.django_db

BODY = {"model": "cached", "messages": user("What is the capital of France?"), "temperature": 0}


@pytest.fixture
def upstream(catalog: Catalog, mock_upstream: Upstream) -> Upstream:
    catalog.add_http_model("cached", mock_upstream, "cache-me", prices=("10", "20"))
    mock_upstream.forget()
    return mock_upstream


def post(api: Api, body: dict[str, Any], cache: str | None = "use") -> Any:
    headers = {**api.headers(), **({"x-tollway-cache": cache} if cache else {})}
    return api.client.post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json", headers=headers
    )


def calls(upstream: Upstream) -> int:
    return sum(1 for r in upstream.received() if r["method"] == "POST")


def test_a_repeat_within_the_ttl_is_a_free_hit_recorded_in_the_ledger(api: Api, upstream: Upstream) -> None:
    first = post(api, BODY)
    assert first.status_code == 200 and first["x-tollway-cache"] == "MISS"
    second = post(api, BODY)
    assert second.status_code == 200 and second["x-tollway-cache"] == "HIT"
    assert second["x-tollway-provider"] == "cache" and second["x-tollway-attempts"] == "0"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"]["cost"] == "0.000000000"
    assert calls(upstream) == 1
    miss, hit = UsageRecord.objects.order_by("created_at")
    assert (miss.cache_hit, miss.attempts, miss.cost > 0) == (False, 1, True)
    assert (hit.cache_hit, hit.attempts, hit.provider, hit.cost) == (True, 0, "cache", Decimal("0"))
    assert hit.input_tokens == miss.input_tokens  # what was served is recorded, at the hit price


def test_a_hit_is_billed_at_the_configured_share(api: Api, upstream: Upstream, settings: LazySettings) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "CACHE_HIT_PRICE_FACTOR": "0.5"}
    post(api, BODY)
    post(api, BODY)
    miss, hit = UsageRecord.objects.order_by("created_at")
    assert hit.cost == miss.cost / 2 and hit.input_price_per_mtok == Decimal("5")


def test_a_streamed_request_is_served_from_cache_as_sse(api: Api, upstream: Upstream) -> None:
    plain = post(api, BODY).json()["choices"][0]["message"]["content"]
    response = post(api, {**BODY, "stream": True, "stream_options": {"include_usage": True}})
    assert response["x-tollway-cache"] == "HIT"
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"]) == plain
    assert events[-2]["usage"]["cost"] == "0.000000000"
    assert calls(upstream) == 1


def test_a_streamed_miss_fills_the_cache(api: Api, upstream: Upstream) -> None:
    events = sse_events(post(api, {**BODY, "stream": True}))
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    hit = post(api, BODY)
    assert hit["x-tollway-cache"] == "HIT"
    assert hit.json()["choices"][0]["message"]["content"] == streamed
    assert calls(upstream) == 1


def test_one_tenants_cache_never_serves_another(
    api: Api, upstream: Upstream, client: Client, other_tenant: Any, make_key: Any
) -> None:
    post(api, BODY)
    other = Api(client, make_key(other_tenant).plaintext)
    response = post(other, BODY)
    assert response["x-tollway-cache"] == "MISS"
    assert calls(upstream) == 2


def test_sampling_requests_are_cached_only_when_forced(api: Api, upstream: Upstream) -> None:
    warm = {**BODY, "temperature": 0.7}
    assert "x-tollway-cache" not in post(api, warm)  # "use" means deterministic requests only
    assert "x-tollway-cache" not in post(api, warm)
    assert calls(upstream) == 2
    assert post(api, warm, "force")["x-tollway-cache"] == "MISS"
    assert post(api, warm, "force")["x-tollway-cache"] == "HIT"
    assert calls(upstream) == 3


def test_the_cache_is_off_unless_asked_and_a_tenant_can_turn_it_on(api: Api, upstream: Upstream, tenant: Any) -> None:
    post(api, BODY, cache=None)
    assert "x-tollway-cache" not in post(api, BODY, cache=None)
    assert calls(upstream) == 2
    tenant.response_cache = "deterministic"
    tenant.save()
    principals.clear_local()
    assert post(api, BODY, cache=None)["x-tollway-cache"] == "MISS"
    assert post(api, BODY, cache=None)["x-tollway-cache"] == "HIT"
    assert "x-tollway-cache" not in post(api, BODY, cache="skip")


def test_an_entry_expires_after_its_ttl(api: Api, upstream: Upstream, settings: LazySettings) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "RESPONSE_CACHE_SECONDS": 1}
    post(api, BODY)
    assert post(api, BODY)["x-tollway-cache"] == "HIT"
    time.sleep(1.1)
    assert post(api, BODY)["x-tollway-cache"] == "MISS"
    assert calls(upstream) == 2


def test_a_hit_rebuilt_from_a_stream_still_matches_openais_schema(api: Api, upstream: Upstream) -> None:
    sse_events(post(api, {**BODY, "stream": True}))
    hit = post(api, BODY)
    assert hit["x-tollway-cache"] == "HIT"
    validate("CreateChatCompletionResponse", hit.json())


def test_a_stream_with_reasoning_is_not_cached_as_plain_text(
    api: Api, catalog: Catalog, anthropic_upstream: Upstream
) -> None:
    catalog.add_http_model("thinker", anthropic_upstream, "claude-sonnet-4-20250514", kind="anthropic")
    body = {"model": "thinker", "messages": user("GCD?"), "reasoning_effort": "low", "temperature": 0}
    sse_events(post(api, {**body, "stream": True}))
    # the plain repeat is not a hit that would lose the thinking (and its signature)
    again = post(api, body)
    assert again["x-tollway-cache"] == "MISS" and again.json()["choices"][0]["message"]["thinking_blocks"]
