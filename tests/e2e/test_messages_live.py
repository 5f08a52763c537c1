"""The Messages API (``/v1/messages``) with the official anthropic SDK against live Tollway
(gunicorn): through an Anthropic deployment (passed through natively) and through an
OpenAI-compatible one (translated), each upstream request asserted exactly as the loopback
upstream received it; Anthropic's errors as the SDK's own exceptions; and Claude Code's
request sequence replayed from tests/fixtures/claude_code."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from billing.models import UsageRecord
from proxy.models import Provider
from tenants import services
from tests.conftest import ROOT, UPSTREAM_KEY, Catalog, Upstream, ledger_row, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live

WEATHER_TOOL: Any = {  # the SDK types its params as TypedDicts; these are plain JSON
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"],
    },
}
QUESTION: Any = {"role": "user", "content": "What's the weather like in San Francisco?"}
SESSION = json.loads((ROOT / "tests/fixtures/claude_code/session.json").read_text())


@pytest.fixture
def gateway(
    production_env: dict[str, str], catalog: Catalog, mock_upstream: Upstream, anthropic_upstream: Upstream
) -> Iterator[str]:
    add, kind = catalog.add_http_model, Provider.Kind.ANTHROPIC
    add(
        "claude-http",
        anthropic_upstream,
        "claude-sonnet-4-20250514",
        ("3", "15"),
        kind=kind,
        cache_prices=("0.30", "3.75"),
    )
    add("claude-sonnet-4-5-20250929", anthropic_upstream, "claude-sonnet-4-5-20250929", ("3", "15"), kind=kind)
    add("claude-haiku-4-5-20251001", anthropic_upstream, "claude-haiku-4-5-20251001", ("1", "5"), kind=kind)
    add("claude-cut", anthropic_upstream, "mock-cut", kind=kind)
    add("claude-slow", anthropic_upstream, "mock-slow", kind=kind)
    for status in (400, 401, 429, 500, 529):
        add(f"claude-error-{status}", anthropic_upstream, f"mock-error-{status}", kind=kind)
    add("gpt-http", mock_upstream, "gpt-4.1", ("8", "32"))
    proc, base = serve(production_env)
    try:
        yield base
    finally:
        stop(proc)


@pytest.fixture
def client(gateway: str, key: services.CreatedKey) -> Iterator[anthropic.Anthropic]:
    sdk = anthropic.Anthropic(base_url=gateway, api_key=key.plaintext, max_retries=0, timeout=30)
    yield sdk
    sdk.close()


def text_of(message: anthropic.types.Message) -> str:
    block = message.content[0]
    assert block.type == "text"
    return block.text


def row(request_id: str) -> UsageRecord:
    return ledger_row(request_id=request_id)


def same_bill(one: UsageRecord, other: UsageRecord) -> None:
    fields = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "cost", "api")
    assert [getattr(one, f) for f in fields] == [getattr(other, f) for f in fields]
    assert not one.usage_estimated and not other.usage_estimated


def test_through_an_anthropic_deployment_the_body_passes_through_and_is_billed_exactly(
    client: anthropic.Anthropic, anthropic_upstream: Upstream
) -> None:
    params: dict[str, Any] = {
        "model": "claude-http",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hello"}],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        # Sampling settings: still in the API's reference, no longer in this SDK's signature.
        "extra_body": {"temperature": 0.5, "top_k": 5},
    }
    sent = {k: v for k, v in params.items() if k != "extra_body"} | params["extra_body"]
    # a plain call: the client's body, with the provider's model name, and its betas
    raw = client.messages.with_raw_response.create(
        **params, extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"}
    )
    message = raw.parse()
    received = anthropic_upstream.last()
    assert (received["path"], received["body"]) == ("/v1/messages", {**sent, "model": "claude-sonnet-4-20250514"})
    assert received["headers"] == {
        "x-api-key": UPSTREAM_KEY,
        "anthropic-version": raw.http_request.headers["anthropic-version"],  # the SDK's own
        "anthropic-beta": "prompt-caching-2024-07-31",
    }
    assert text_of(message) == "Hello! How can I help you today?"
    assert (message.model, message.stop_reason, message.id) == (
        "claude-http",
        "end_turn",
        "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    )
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (25, 1800, 200)
    plain = row(raw.headers["x-request-id"])
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert (plain.api, plain.input_tokens, plain.cached_input_tokens, plain.cache_write_tokens) == (
        "messages",
        2025,
        1800,
        200,
    )
    # 25 at $3 + 1800 at $0.30 + 200 at $3.75 + 15 at $15, per million
    assert plain.cost == Decimal("0.001590000") == Decimal(raw.headers["x-tollway-cost"])

    # the SDK's streaming helper: the same message, and the same bill to the token
    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert anthropic_upstream.last()["body"] == {**sent, "model": "claude-sonnet-4-20250514", "stream": True}
    assert text_of(final) == text_of(message)
    assert final.usage.cache_read_input_tokens == 1800 and final.usage.output_tokens == 15
    streamed = row(request_id)
    same_bill(streamed, plain)
    assert streamed.streamed and not plain.streamed


def test_tool_use_over_two_turns_and_thinking_pass_through(
    client: anthropic.Anthropic, anthropic_upstream: Upstream
) -> None:
    # turn one: the model calls the tool
    first = client.messages.create(model="claude-http", max_tokens=256, tools=[WEATHER_TOOL], messages=[QUESTION])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", {"location": "San Francisco, CA", "unit": "celsius"})
    # turn two: its result goes back as the SDK builds it, untouched
    history: list[Any] = [
        QUESTION,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "15 degrees"}]},
    ]
    with client.messages.stream(model="claude-http", max_tokens=256, tools=[WEATHER_TOOL], messages=history) as stream:
        streamed_call = next(b for b in stream.get_final_message().content if b.type == "tool_use")
    assert anthropic_upstream.last()["body"]["messages"] == history
    assert streamed_call.input == call.input  # input_json_delta assembled by the SDK

    # thinking: the signed block comes back whole, and goes back on the next turn
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    reply = client.messages.create(model="claude-http", max_tokens=2048, thinking=thinking, messages=[QUESTION])
    block = reply.content[0]
    assert block.type == "thinking" and block.signature.startswith("EqQBCgIYAhIM")
    with client.messages.stream(model="claude-http", max_tokens=2048, thinking=thinking, messages=[QUESTION]) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_message()
    assert "signature" in kinds and "thinking" in kinds
    assert streamed.content[0].model_dump() == block.model_dump()


def test_count_tokens_asks_an_anthropic_provider_and_estimates_otherwise(
    client: anthropic.Anthropic, anthropic_upstream: Upstream
) -> None:
    raw = client.messages.with_raw_response.count_tokens(model="claude-http", messages=[QUESTION], tools=[WEATHER_TOOL])
    assert raw.parse().input_tokens == 2095 and raw.headers["x-tollway-token-count"] == "provider"
    assert anthropic_upstream.last()["path"] == "/v1/messages/count_tokens"
    assert anthropic_upstream.last()["body"] == {
        "model": "claude-sonnet-4-20250514",
        "messages": [QUESTION],
        "tools": [WEATHER_TOOL],
    }
    estimated = client.messages.with_raw_response.count_tokens(model="gpt-http", messages=[QUESTION])
    assert estimated.parse().input_tokens > 0 and estimated.headers["x-tollway-token-count"] == "estimate"
    assert not UsageRecord.objects.exists()  # not billed


def test_through_an_openai_compatible_deployment_the_request_is_translated_both_ways(
    client: anthropic.Anthropic, mock_upstream: Upstream
) -> None:
    history: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]
    params: dict[str, Any] = {
        "model": "gpt-http",
        "max_tokens": 50,
        "system": "You are terse.",
        "messages": history,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "extra_body": {"temperature": 0.2},
    }
    raw = client.messages.with_raw_response.create(**params)
    message = raw.parse()
    assert mock_upstream.last()["body"] == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "max_tokens": 50,
        "temperature": 0.2,
        "stop": ["END"],
        "user": "user-42",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": WEATHER_TOOL["input_schema"],
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    }
    assert message.type == "message" and message.model == "gpt-http" and message.content[0].type == "text"
    plain = row(raw.headers["x-request-id"])
    assert plain.api == "messages" and plain.provider == "loopback"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (plain.input_tokens, plain.output_tokens)

    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert mock_upstream.last()["body"]["stream_options"] == {"include_usage": True}
    assert text_of(final) == text_of(message)
    assert final.usage.input_tokens == message.usage.input_tokens
    same_bill(row(request_id), plain)


def test_errors_are_the_sdks_own_exceptions(
    client: anthropic.Anthropic, gateway: str, key: services.CreatedKey
) -> None:
    ask: dict[str, Any] = {"max_tokens": 10, "messages": [QUESTION]}
    bad_key = anthropic.Anthropic(base_url=gateway, api_key="tlw_wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad_key.messages.create(model="claude-http", **ask)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-nope", **ask)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="claude-error-400", **ask)
    assert "roles must alternate" in bad.value.message
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude-error-429", **ask)
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model="claude-error-529", **ask)
    with pytest.raises(anthropic.InternalServerError) as broken:
        client.messages.create(model="claude-error-500", **ask)
    assert broken.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as ours:  # our credential: never the provider's words
        client.messages.create(model="claude-error-401", **ask)
    assert "x-api-key" not in ours.value.message

    # an exhausted budget: a 429 the SDK does not retry, even when told to retry
    sent: list[str] = []
    hook = anthropic.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(str(request.url))]})
    poor = services.api_key_create(tenant=key.api_key.tenant, name="poor", monthly_budget_usd=Decimal("0.01"))
    patient = anthropic.Anthropic(base_url=gateway, api_key=poor.plaintext, max_retries=3, http_client=hook)
    with pytest.raises(anthropic.RateLimitError) as refused:
        patient.messages.create(model="gpt-http", max_tokens=20_000, messages=[QUESTION])
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1
    patient.close()


def test_a_cut_stream_and_a_client_that_hangs_up_are_billed(client: anthropic.Anthropic) -> None:
    with client.messages.with_streaming_response.create(
        model="claude-cut", max_tokens=10, messages=[QUESTION], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(anthropic.APIError):
            for _ in response.parse():
                pass
    cut = row(request_id)
    assert cut.outcome == UsageRecord.Outcome.UPSTREAM_ERROR and cut.usage_estimated and cut.cost > 0
    assert (cut.input_tokens, cut.cached_input_tokens) == (2025, 1800)  # the provider's own count of the input

    # a client that reads one event and leaves: Tollway reads on for the provider's count
    with client.messages.with_streaming_response.create(
        model="claude-slow", max_tokens=10, messages=[QUESTION], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        next(iter(response.iter_lines()))
    gone = row(request_id)
    assert gone.outcome == UsageRecord.Outcome.CLIENT_GONE
    assert (gone.input_tokens, gone.output_tokens, gone.usage_estimated) == (2025, 15, False)


def _replay(base: str, key: str, request: dict[str, Any], model: str | None = None) -> httpx.Response:
    headers = {**request["headers"], "x-api-key": key}
    body = {**request["body"], **({"model": model} if model else {})}
    return httpx.post(f"{base}{request['path']}", headers=headers, content=json.dumps(body), timeout=30)


def test_claude_codes_requests_replayed(
    gateway: str, key: services.CreatedKey, anthropic_upstream: Upstream, mock_upstream: Upstream
) -> None:
    requests = SESSION["requests"]
    for request in requests:
        anthropic_upstream.forget()
        response = _replay(gateway, key.plaintext, request)
        assert response.status_code == 200, (request["step"], response.text)
        received = anthropic_upstream.last()
        # everything Claude Code sent reaches Anthropic: the body, the version, the betas
        sent_body = request["body"]
        if request["path"].startswith("/v1/messages/count_tokens"):
            assert response.json()["input_tokens"] == 2095
        elif sent_body.get("stream"):
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.text.startswith("event: message_start\n") and "event: message_stop\n" in response.text
        else:
            assert response.json()["type"] == "message"
        assert received["body"] == sent_body
        assert received["headers"]["anthropic-beta"] == request["headers"]["anthropic-beta"]
        assert received["headers"]["x-api-key"] == UPSTREAM_KEY
    billed = UsageRecord.objects.filter(api="messages")
    deadline = time.monotonic() + 5
    while billed.count() < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert billed.count() == 4  # every call but count_tokens
    # the tool-using turn, pointed at an OpenAI-compatible model: translated, the tool result in order
    response = _replay(gateway, key.plaintext, requests[-1], model="gpt-http")
    assert response.status_code == 200 and "event: message_stop" in response.text
    sent = mock_upstream.last()["body"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]
    assert sent["messages"][0]["content"].startswith("You are Claude Code, Anthropic's official CLI for Claude.\n")
    assert sent["messages"][2]["tool_calls"][0]["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert sent["messages"][3] == {
        "role": "tool",
        "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
        "content": "San Francisco: +15°C",
    }
    assert [t["function"]["name"] for t in sent["tools"]] == ["Bash", "Read"]
    assert sent["max_tokens"] == 32000 and sent["user"].startswith("user_")
