"""POST /v1/chat/completions: a tenant's key gets a priced answer, and exactly one ledger row."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import RequestFactory

from billing.models import UsageRecord
from proxy import mockgen, tokens, views
from tenants.services import CreatedKey
from tests.conftest import Api, Catalog, Upstream, sse_events, user

pytestmark = pytest.mark.django_db


def expected_cost(prompt: int, completion: int, price: tuple[Decimal, Decimal]) -> Decimal:
    return ((prompt * price[0] + completion * price[1]) / Decimal(1_000_000)).quantize(Decimal("0.000000001"))


def test_completion_is_priced_and_recorded_once(api: Api, catalog: Catalog) -> None:
    # given a tenant's key and gpt-4.1 at $8 / $32 per million tokens
    # when the tenant asks for a completion
    response = api.chat({"model": "gpt-4.1", "messages": user("What does Tollway do?")})

    # then the answer carries real token counts and their exact cost, in body and header
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4.1"
    text = body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == tokens.count(text)
    assert body["usage"]["prompt_tokens"] == tokens.prompt_tokens(user("What does Tollway do?"))
    cost = expected_cost(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"], catalog.price("gpt-4.1"))
    assert body["usage"]["cost"] == str(cost)
    assert response["X-Tollway-Cost"] == str(cost)

    # and the ledger holds one row with the same cost, as a Decimal, and the prices it used
    row = UsageRecord.objects.get()
    assert row.cost == cost and isinstance(row.cost, Decimal)
    assert (row.input_tokens, row.output_tokens) == (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    assert (row.input_price_per_mtok, row.output_price_per_mtok) == catalog.price("gpt-4.1")
    assert row.request_id == response["X-Request-ID"]
    assert row.tenant.slug == "acme" and row.model.name == "gpt-4.1" and row.provider == "mock"
    assert not row.streamed and not row.usage_estimated
    assert row.outcome == UsageRecord.Outcome.COMPLETED


def test_each_call_gets_its_own_row(api: Api, catalog: Catalog) -> None:
    for _ in range(3):
        assert api.chat({"model": "deepseek-v3", "messages": user("hi")}).status_code == 200
    assert UsageRecord.objects.count() == 3
    assert UsageRecord.objects.values("request_id").distinct().count() == 3


def test_stream_relays_chunks_and_reports_cost_when_asked(api: Api, catalog: Catalog) -> None:
    response = api.chat(
        {
            "model": "gpt-4.1",
            "messages": user("stream please"),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["X-Accel-Buffering"] == "no"
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert usage_chunk["usage"]["completion_tokens"] == tokens.count(content) > 0
    row = UsageRecord.objects.get()
    assert usage_chunk["usage"]["cost"] == str(row.cost)
    assert row.cost == expected_cost(row.input_tokens, row.output_tokens, catalog.price("gpt-4.1"))
    assert row.streamed and not row.usage_estimated and row.outcome == UsageRecord.Outcome.COMPLETED
    assert all(e["model"] == "gpt-4.1" for e in events[:-1])


def test_stream_without_include_usage_hides_usage_but_still_bills_it(api: Api, catalog: Catalog) -> None:
    response = api.chat({"model": "gpt-4.1", "messages": user("stream please"), "stream": True})
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1]), "no usage-only chunk unless the client asked"
    assert all("usage" not in e for e in events[:-1])
    row = UsageRecord.objects.get()
    assert row.output_tokens > 0 and row.cost > 0 and not row.usage_estimated


def _leave_after_three_chunks(rf: RequestFactory, key: CreatedKey, request_id: str, content: str) -> None:
    # The view is called directly, as the WSGI server calls it, so that closing the
    # response is exactly what gunicorn does when the client disconnects.
    request = rf.post(
        "/v1/chat/completions",
        data={"model": "gpt-4.1", "messages": user(content), "stream": True},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key.plaintext}"},
    )
    request.request_id = request_id  # type: ignore[attr-defined]
    response = views.chat_completions(request)
    stream = iter(response)
    received = [next(stream) for _ in range(3)]
    assert all(chunk.startswith(b"data: ") for chunk in received)
    # Keep the test's transaction open across request_finished, as Django's test client does.
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def test_client_leaving_mid_stream_is_billed_from_the_providers_count(
    rf: RequestFactory, key: CreatedKey, catalog: Catalog
) -> None:
    # given a client that reads three chunks and leaves
    _leave_after_three_chunks(rf, key, "req-client-leaves", "I will leave early")
    # then Tollway read on to the provider's usage chunk and billed exactly that
    full = mockgen.completion({"messages": user("I will leave early")}, model="gpt-4.1")["usage"]
    row = UsageRecord.objects.get()
    assert row.outcome == UsageRecord.Outcome.CLIENT_GONE
    assert not row.usage_estimated
    assert (row.input_tokens, row.output_tokens) == (full["prompt_tokens"], full["completion_tokens"])


def test_client_leaving_is_estimated_when_the_drain_time_is_up(
    rf: RequestFactory, key: CreatedKey, catalog: Catalog, settings: Any
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "DISCONNECT_DRAIN_SECONDS": 0}
    _leave_after_three_chunks(rf, key, "req-client-leaves", "I will leave early")
    row = UsageRecord.objects.get()
    assert row.outcome == UsageRecord.Outcome.CLIENT_GONE
    assert row.usage_estimated
    assert row.input_tokens == tokens.prompt_tokens(user("I will leave early"))
    assert row.output_tokens >= 1 and row.cost > 0


def test_seed_article_api_prefix_works(api: Api, catalog: Catalog) -> None:
    response = api.chat({"model": "gpt-4.1", "messages": user("hi")}, prefix="/api/v1")
    assert response.status_code == 200
    assert UsageRecord.objects.count() == 1


def test_n_choices_are_all_billed(api: Api, catalog: Catalog) -> None:
    body = api.chat({"model": "gpt-4.1", "messages": user("twice"), "n": 2}).json()
    assert len(body["choices"]) == 2
    total = sum(tokens.count(c["message"]["content"]) for c in body["choices"])
    assert body["usage"]["completion_tokens"] == total == UsageRecord.objects.get().output_tokens


class TestLoopbackUpstream:
    """The real upstream path: httpx to an OpenAI-compatible server on loopback."""

    def test_completion(self, api: Api, catalog: Catalog, mock_upstream: Upstream) -> None:
        catalog.add_http_model("vllm-llama", mock_upstream, "meta-llama-3", prices=("0.50", "1.50"))
        response = api.chat({"model": "vllm-llama", "messages": user("over http"), "temperature": 0.2})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["model"] == "vllm-llama"
        row = UsageRecord.objects.get()
        assert row.provider == "loopback" and row.upstream_model == "meta-llama-3"
        assert row.cost == expected_cost(row.input_tokens, row.output_tokens, (Decimal("0.50"), Decimal("1.50")))
        assert body["usage"]["cost"] == str(row.cost)
        assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}, "provider details are kept"

    def test_stream(self, api: Api, catalog: Catalog, mock_upstream: Upstream) -> None:
        catalog.add_http_model("vllm-llama", mock_upstream, "meta-llama-3")
        response = api.chat(
            {
                "model": "vllm-llama",
                "messages": user("stream over http"),
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        events = sse_events(response)
        assert events[-1] == "[DONE]"
        row = UsageRecord.objects.get()
        assert events[-2]["usage"]["cost"] == str(row.cost)
        assert row.streamed and not row.usage_estimated
        content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2])
        assert row.output_tokens == tokens.count(content)

    def test_stream_cut_by_upstream_ends_in_error_event_and_is_billed_as_estimate(
        self, api: Api, catalog: Catalog, mock_upstream: Upstream
    ) -> None:
        catalog.add_http_model("flaky", mock_upstream, "mock-cut")
        response = api.chat({"model": "flaky", "messages": user("cut me off"), "stream": True})
        assert response.status_code == 200
        events = sse_events(response)
        assert "[DONE]" not in events
        assert "error" in events[-1] and events[-1]["error"]["type"] == "upstream_error"
        row = UsageRecord.objects.get()
        assert row.outcome == UsageRecord.Outcome.UPSTREAM_ERROR
        assert row.usage_estimated and row.output_tokens >= 1 and row.cost > 0

    def test_stream_without_upstream_usage_is_billed_as_estimate(
        self, api: Api, catalog: Catalog, mock_upstream: Upstream
    ) -> None:
        catalog.add_http_model("quiet", mock_upstream, "mock-no-usage")
        events = sse_events(api.chat({"model": "quiet", "messages": user("no usage"), "stream": True}))
        assert events[-1] == "[DONE]"
        content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        row = UsageRecord.objects.get()
        assert row.usage_estimated and row.outcome == UsageRecord.Outcome.COMPLETED
        assert row.output_tokens == tokens.count(content)


@pytest.mark.parametrize("upstream_model", ["mock-usage-on-finish", "mock-usage-on-every"])
def test_usage_on_a_chunk_with_choices_reaches_the_client_once(
    api: Api, catalog: Catalog, mock_upstream: Upstream, upstream_model: str
) -> None:
    # given an upstream that puts usage on chunks that still carry choices (its finish
    # chunk, or every chunk as vLLM's continuous_usage_stats does)
    catalog.add_http_model("vllm", mock_upstream, upstream_model)
    body = {"model": "vllm", "messages": user("say it once"), "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(api.chat(body))
    # then every delta and the finish reason arrive once, and usage only on the last chunk
    text, _ = mockgen.reply(user("say it once"), max_tokens=None)
    chunks = [e for e in events if isinstance(e, dict)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == text
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]].count("stop") == 1
    *relayed, final = chunks
    assert all(c["usage"] is None for c in relayed)
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == tokens.count(text)
    # and the usage chunk belongs to the stream: its id and created
    assert (final["id"], final["created"], final["object"]) == (
        relayed[0]["id"],
        relayed[0]["created"],
        "chat.completion.chunk",
    )
    assert final["usage"]["cost"] == str(UsageRecord.objects.get().cost)


def test_a_usage_chunk_tollway_makes_up_has_the_streams_id_and_created(
    api: Api, catalog: Catalog, mock_upstream: Upstream
) -> None:
    catalog.add_http_model("quiet", mock_upstream, "mock-no-usage")
    body = {"model": "quiet", "messages": user("no usage"), "stream": True, "stream_options": {"include_usage": True}}
    *chunks, final, done = sse_events(api.chat(body))
    assert done == "[DONE]" and final["choices"] == [] and final["usage"]["completion_tokens"] > 0
    assert final["id"] == chunks[0]["id"] != "" and final["created"] == chunks[0]["created"]
    assert final["object"] == "chat.completion.chunk" and final["model"] == "quiet"
