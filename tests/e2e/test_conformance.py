"""Conformance: the official openai SDK against live Tollway (gunicorn), with one loopback
upstream per provider kind speaking that provider's own wire format from documented
examples (tests/fixtures). Each adapter's translated request is asserted exactly as the
upstream received it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from billing.models import UsageRecord
from proxy import mockgen
from proxy.models import Provider
from tenants import services
from tests.conftest import UPSTREAM_KEY, Catalog, Upstream, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
IMAGE = "data:image/png;base64,iVBORw0KGgo="
CONVERSATION: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": IMAGE}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
JSON_SCHEMA_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}}

ERROR_MODELS = {
    # upstream status -> (status the client sees, OpenAI error code)
    400: (400, "upstream_rejected_request"),
    401: (502, "upstream_authentication_failed"),
    403: (502, "upstream_authentication_failed"),
    429: (429, "rate_limit_exceeded"),
    500: (502, "upstream_unavailable"),
}


@pytest.fixture
def gateway(
    production_env: dict[str, str],
    catalog: Catalog,
    mock_upstream: Upstream,
    anthropic_upstream: Upstream,
    gemini_upstream: Upstream,
) -> Iterator[str]:
    add = catalog.add_http_model
    add("gpt-http", mock_upstream, "gpt-4.1", ("8", "32"), cache_prices=("2", None))
    add("gpt-instruct", mock_upstream, "gpt-3.5-turbo-instruct", ("1.5", "2"))
    add("gpt-embed", mock_upstream, "text-embedding-3-small", ("0.02", "0"))
    add("gpt-slow", mock_upstream, "mock-slow")
    add("gpt-cut", mock_upstream, "mock-cut")
    anthropic, gemini = Provider.Kind.ANTHROPIC, Provider.Kind.GEMINI
    add(
        "claude-http",
        anthropic_upstream,
        "claude-sonnet-4-20250514",
        ("3", "15"),
        kind=anthropic,
        cache_prices=("0.30", "3.75"),
    )
    add("claude-cut", anthropic_upstream, "mock-cut", kind=anthropic)
    add("claude-stream-error", anthropic_upstream, "mock-stream-error", kind=anthropic)
    add("gemini-http", gemini_upstream, "gemini-2.5-flash", ("0.30", "2.50"), kind=gemini, cache_prices=("0.075", None))
    add("gemini-embed", gemini_upstream, "gemini-embedding-001", ("0.15", "0"), kind=gemini)
    add("gemini-cut", gemini_upstream, "mock-cut", kind=gemini)
    add("gemini-stream-error", gemini_upstream, "mock-stream-error", kind=gemini)
    for kind_prefix, upstream, kind in (
        ("gpt", mock_upstream, Provider.Kind.OPENAI),
        ("claude", anthropic_upstream, anthropic),
        ("gemini", gemini_upstream, gemini),
    ):
        add(f"{kind_prefix}-garbage", upstream, "mock-garbage", kind=kind)
    for status in [*ERROR_MODELS, 503, 529]:
        add(f"gpt-error-{status}", mock_upstream, f"mock-error-{status}")
        add(f"claude-error-{status}", anthropic_upstream, f"mock-error-{status}", kind=anthropic)
        add(f"gemini-error-{status}", gemini_upstream, f"mock-error-{status}", kind=gemini)
    proc, base = serve(production_env)
    try:
        yield base
    finally:
        stop(proc)


def row(request_id: str) -> UsageRecord:
    # A JSON answer's row is written just after the answer is sent: give it a moment.
    deadline = time.monotonic() + 5
    while not UsageRecord.objects.filter(request_id=request_id).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return UsageRecord.objects.get(request_id=request_id)


def ledger_cost(record: UsageRecord) -> Decimal:
    """The documented formula, recomputed from the row's own snapshot."""
    assert record.cached_input_price_per_mtok is not None and record.cache_write_price_per_mtok is not None
    uncached = record.input_tokens - record.cached_input_tokens - record.cache_write_tokens
    raw = (
        uncached * record.input_price_per_mtok
        + record.cached_input_tokens * record.cached_input_price_per_mtok
        + record.cache_write_tokens * record.cache_write_price_per_mtok
        + record.output_tokens * record.output_price_per_mtok
    ) / Decimal(1_000_000)
    return raw.quantize(Decimal("0.000000001"))


def stream_call(client: openai.OpenAI, **params: Any) -> tuple[list[Any], str]:
    """A streamed call's chunks and its request id."""
    with client.chat.completions.with_streaming_response.create(stream=True, **params) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    return chunks, request_id


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def tool_calls_of(chunks: list[Any]) -> dict[int, dict[str, str]]:
    """Tool-call deltas assembled the way the SDK's users assemble them."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return calls


def assert_same_bill(streamed: UsageRecord, plain: UsageRecord) -> None:
    fields = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "cost")
    assert [getattr(streamed, f) for f in fields] == [getattr(plain, f) for f in fields]
    assert streamed.streamed and not plain.streamed
    assert not streamed.usage_estimated and not plain.usage_estimated


def assert_error(exc: openai.APIStatusError, status: int, code: str) -> dict[str, Any]:
    assert exc.status_code == status, exc
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    return dict(body["error"])


def check_error_paths(client: openai.OpenAI, prefix: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=f"{prefix}-garbage", messages=[{"role": "user", "content": "x"}])
    assert_error(caught.value, 502, "upstream_bad_response")
    for upstream_status, (status, code) in ERROR_MODELS.items():
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model=f"{prefix}-error-{upstream_status}", messages=[{"role": "user", "content": "x"}]
            )
        error = assert_error(caught.value, status, code)
        if upstream_status in (401, 403):
            # our credential's trouble: the provider's words about it never reach the tenant
            assert error["message"] == "The upstream provider refused Tollway's credentials."
            assert error["type"] == "upstream_error"
            assert caught.value.response.headers["x-should-retry"] == "false"
        if upstream_status == 429:
            # the provider's own advice: a header (OpenAI 1 s, Anthropic 7 s) or Gemini's RetryInfo
            expected = {"gpt": "1", "claude": "7", "gemini": "37"}[prefix]
            assert caught.value.response.headers["retry-after"] == expected
    for upstream_status in (503, 529):
        if (prefix, upstream_status) in (("gemini", 529), ("claude", 503)):
            continue  # Google has no 529; Anthropic's overloaded is 529
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model=f"{prefix}-error-{upstream_status}", messages=[{"role": "user", "content": "x"}]
            )
        assert_error(caught.value, 503, "upstream_overloaded")
        assert caught.value.response.headers["retry-after"]


def check_mid_stream_failures(client: openai.OpenAI, prefix: str) -> None:
    for model, estimated in ((f"{prefix}-cut", True), (f"{prefix}-stream-error", True)):
        if prefix == "gpt" and model.endswith("stream-error"):
            continue
        with client.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": "cut"}], stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            with pytest.raises(openai.APIError):
                for _ in response.parse():
                    pass
        time.sleep(0.1)
        record = row(request_id)
        assert record.outcome == UsageRecord.Outcome.UPSTREAM_ERROR
        assert record.usage_estimated is estimated and record.cost > 0
        # the provider's own count of the input, cached tokens included, is kept
        partial = {"claude": (2025, 1800, 200), "gemini": (12, 8, 0)}.get(prefix)
        if partial is not None:
            assert (record.input_tokens, record.cached_input_tokens, record.cache_write_tokens) == partial


def test_anthropic_messages_api(gateway: str, key: services.CreatedKey, sdk: Any, anthropic_upstream: Upstream) -> None:
    client = sdk(gateway, key.plaintext)
    params: dict[str, Any] = {
        "model": "claude-http",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 100,
        "stop": "END",
        "temperature": 0.5,
    }
    # a plain completion: translated request, translated answer, cache tokens priced
    raw = client.chat.completions.with_raw_response.create(**params)
    reply = raw.parse()
    assert anthropic_upstream.last() == {
        "method": "POST",
        "path": "/v1/messages",
        "query": "",
        "headers": {"x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01"},
        "body": {
            "model": "claude-sonnet-4-20250514",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
            "max_tokens": 100,
            "system": "Be brief.",
            "stop_sequences": ["END"],
            "temperature": 0.5,
        },
    }
    assert reply.choices[0].message.content == "Hello! How can I help you today?"
    assert reply.choices[0].finish_reason == "stop" and reply.model == "claude-http"
    usage = reply.usage.model_dump()
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (25 + 1800 + 200, 15)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1800
    plain = row(raw.headers["x-request-id"])
    assert (plain.cached_input_tokens, plain.cache_write_tokens) == (1800, 200)
    # 25 at $3 + 1800 at $0.30 + 200 at $3.75 + 15 at $15, per million
    assert plain.cost == Decimal("0.001590000") == ledger_cost(plain) == Decimal(usage["cost"])

    # the same call streamed: the same text, and the same bill to the token and the cent
    chunks, request_id = stream_call(client, stream_options={"include_usage": True}, **params)
    assert anthropic_upstream.last()["body"] == {**anthropic_upstream.received()[-2]["body"], "stream": True}
    assert text_of(chunks) == "Hello! How can I help you today?"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.model_dump()["cost"] == "0.001590000"
    assert_same_bill(row(request_id), plain)

    # tools, with the whole conversation shape translated
    tool_params: dict[str, Any] = {
        "model": "claude-http",
        "messages": CONVERSATION,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_completion_tokens": 256,
        "top_p": 0.9,
        "user": "user-42",
    }
    reply = client.chat.completions.create(**tool_params)
    assert anthropic_upstream.last()["body"] == {
        "model": "claude-sonnet-4-20250514",
        "messages": [
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
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}}
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}]},
        ],
        "max_tokens": 256,
        "system": "You are terse.",
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
        "tools": [
            {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the current weather in San Francisco for you."
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name) == ("toolu_01A09q90qw90lq917835lq9", "get_weather")
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}

    # tool-call deltas in a stream assemble to the same call
    chunks, request_id = stream_call(client, **tool_params)
    assert tool_calls_of(chunks) == {
        0: {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}',
        }
    }
    assert text_of(chunks) == "I'll check the current weather in San Francisco for you."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert all(c.usage is None for c in chunks), "no usage chunk unless asked"
    assert (row(request_id).input_tokens, row(request_id).output_tokens) == (472, 89)

    # JSON schema: enforced by a forced answer tool on this (pre-4.5) model, answered as content
    reply = client.chat.completions.create(
        model="claude-http", messages=[{"role": "user", "content": "json"}], response_format=JSON_SCHEMA_FORMAT
    )
    assert anthropic_upstream.last()["body"]["tool_choice"] == {"type": "tool", "name": "final_answer"}
    assert json.loads(reply.choices[0].message.content or "") == {"answer": "Paris"}
    assert reply.choices[0].message.refusal is None and reply.choices[0].finish_reason == "stop"

    # what Anthropic cannot do is refused clearly, before any call
    before = len(anthropic_upstream.received())
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="claude-http", input="x")
    assert_error(caught.value, 400, "unsupported_by_provider")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude-http", messages=[{"role": "user", "content": "x"}], n=2)
    assert caught.value.response.json()["error"]["param"] == "n"
    assert len(anthropic_upstream.received()) == before

    check_error_paths(client, "claude")
    check_mid_stream_failures(client, "claude")


def test_gemini_generate_content_api(
    gateway: str, key: services.CreatedKey, sdk: Any, gemini_upstream: Upstream
) -> None:
    client = sdk(gateway, key.plaintext)
    params: dict[str, Any] = {"model": "gemini-http", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    raw = client.chat.completions.with_raw_response.create(**params)
    reply = raw.parse()
    assert gemini_upstream.last() == {
        "method": "POST",
        "path": "/v1beta/models/gemini-2.5-flash:generateContent",
        "query": "",
        "headers": {"x-goog-api-key": UPSTREAM_KEY},
        "body": {"contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"}]}]},
    }
    assert reply.choices[0].message.content == "The sky is blue because of Rayleigh scattering."
    usage = reply.usage.model_dump()
    # thoughts are output; the cached part of the prompt is priced at the cached rate
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (
        12,
        28,
        8,
    )
    plain = row(raw.headers["x-request-id"])
    assert plain.cost == Decimal("0.000071800") == ledger_cost(plain)

    # streamed: cumulative usageMetadata snapshots, the last one wins
    chunks, request_id = stream_call(client, stream_options={"include_usage": True}, **params)
    assert (gemini_upstream.last()["path"], gemini_upstream.last()["query"]) == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "alt=sse",
    )
    assert gemini_upstream.last()["body"] == gemini_upstream.received()[-2]["body"]
    assert text_of(chunks) == "The sky is blue because of Rayleigh scattering."
    assert chunks[-1].usage.model_dump()["completion_tokens"] == 28
    assert_same_bill(row(request_id), plain)

    # every chat parameter Gemini has, translated
    tool_params: dict[str, Any] = {
        "model": "gemini-http",
        "messages": CONVERSATION,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "n": 1,
        "stop": ["END"],
        "seed": 7,
        "max_completion_tokens": 256,
        "temperature": 0.2,
        "presence_penalty": 0.1,
        "logprobs": True,
        "top_logprobs": 2,
    }
    reply = client.chat.completions.create(**tool_params)
    assert gemini_upstream.last()["body"] == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in this image?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "18C"}}}]},
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "generationConfig": {
            "temperature": 0.2,
            "candidateCount": 1,
            "seed": 7,
            "presencePenalty": 0.1,
            "maxOutputTokens": 256,
            "stopSequences": ["END"],
            "responseLogprobs": True,
            "logprobs": 2,
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": WEATHER_TOOL["function"]["description"],
                        "parameters": WEATHER_TOOL["function"]["parameters"],
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
    }
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }
    chunks, _ = stream_call(client, **tool_params)
    calls = tool_calls_of(chunks)
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"])["unit"] == "celsius"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    # JSON mode
    client.chat.completions.create(
        model="gemini-http", messages=[{"role": "user", "content": "json"}], response_format=JSON_SCHEMA_FORMAT
    )
    assert gemini_upstream.last()["body"]["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": SCHEMA,
    }
    client.chat.completions.create(
        model="gemini-http", messages=[{"role": "user", "content": "json"}], response_format={"type": "json_object"}
    )
    assert gemini_upstream.last()["body"]["generationConfig"] == {"responseMimeType": "application/json"}

    # embeddings through batchEmbedContents; Gemini reports no usage, so Tollway counts it
    raw_embed = client.embeddings.with_raw_response.create(
        model="gemini-embed", input=["hello world", "bye"], dimensions=8
    )
    embedded = raw_embed.parse()
    assert gemini_upstream.last()["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert gemini_upstream.last()["body"] == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "hello world"}]},
                "outputDimensionality": 8,
            },
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "bye"}]},
                "outputDimensionality": 8,
            },
        ]
    }
    assert [d.index for d in embedded.data] == [0, 1] and len(embedded.data[0].embedding) == 8
    embed_row = row(raw_embed.headers["x-request-id"])
    assert embed_row.usage_estimated and (embed_row.input_tokens, embed_row.output_tokens) == (3, 0)

    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="gemini-http", prompt="legacy")
    assert_error(caught.value, 400, "unsupported_by_provider")

    check_error_paths(client, "gemini")
    check_mid_stream_failures(client, "gemini")


def test_openai_compatible_passthrough(
    gateway: str, key: services.CreatedKey, sdk: Any, mock_upstream: Upstream
) -> None:
    client = sdk(gateway, key.plaintext)
    params: dict[str, Any] = {
        "model": "gpt-http",
        "messages": CONVERSATION,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": JSON_SCHEMA_FORMAT,
        "n": 2,
        "stop": ["END"],
        "seed": 7,
        "logprobs": True,
        "top_logprobs": 2,
        "user": "user-42",
        "max_completion_tokens": 64,
    }
    raw = client.chat.completions.with_raw_response.create(**params)
    sent = mock_upstream.last()
    # every parameter reaches the provider unchanged; only the model name is the provider's
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"] == {"authorization": f"Bearer {UPSTREAM_KEY}"}
    assert sent["body"] == {**params, "model": "gpt-4.1"}
    assert len(raw.parse().choices) == 2
    plain = row(raw.headers["x-request-id"])

    chunks, request_id = stream_call(client, stream_options={"include_usage": True}, **params)
    assert mock_upstream.last()["body"] == {
        **params,
        "model": "gpt-4.1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    streamed = row(request_id)
    # the mock streams one choice however many were asked for; its tokens match that choice
    assert streamed.input_tokens == plain.input_tokens and streamed.cost == ledger_cost(streamed)
    assert chunks[-1].usage.model_dump()["cost"] == str(streamed.cost)

    # the same call, streamed or not, bills the same (n=1)
    single = {"model": "gpt-http", "messages": [{"role": "user", "content": "same bill"}]}
    raw = client.chat.completions.with_raw_response.create(**single)
    _, request_id = stream_call(client, **single)
    assert_same_bill(row(request_id), row(raw.headers["x-request-id"]))

    # legacy completions, plain and streamed
    raw_text = client.completions.with_raw_response.create(model="gpt-instruct", prompt="Say hi", max_tokens=5)
    text = raw_text.parse()
    assert mock_upstream.last()["path"] == "/v1/completions"
    assert mock_upstream.last()["body"] == {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5}
    assert text.object == "text_completion" and text.choices[0].text
    streamed_text = list(
        client.completions.create(
            model="gpt-instruct", prompt="Say hi", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in streamed_text if c.choices) == text.choices[0].text
    assert streamed_text[-1].usage.model_dump()["cost"] == str(row(raw_text.headers["x-request-id"]).cost)

    # embeddings
    raw_embed = client.embeddings.with_raw_response.create(model="gpt-embed", input=["one two", "three"])
    assert mock_upstream.last()["body"] == {
        "model": "text-embedding-3-small",
        "input": ["one two", "three"],
        "encoding_format": "base64",
    }
    embedded = raw_embed.parse()
    assert len(embedded.data) == 2 and embedded.usage.prompt_tokens == 3
    embed_row = row(raw_embed.headers["x-request-id"])
    assert not embed_row.usage_estimated and embed_row.cost == Decimal("0.000000060")

    check_error_paths(client, "gpt")
    check_mid_stream_failures(client, "gpt")


def test_client_disconnect_mid_stream_is_billed_from_the_providers_usage(
    gateway: str, key: services.CreatedKey, sdk: Any
) -> None:
    # given a slow stream that the client abandons after three chunks
    client = sdk(gateway, key.plaintext)
    messages = [{"role": "user", "content": "a long answer please"}]
    with client.chat.completions.with_streaming_response.create(
        model="gpt-slow", messages=messages, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        stream = response.parse()
        for _, _chunk in zip(range(3), stream, strict=False):
            pass
    # then Tollway reads on after the disconnect until the provider's usage arrives
    deadline = time.monotonic() + 15
    while not UsageRecord.objects.filter(request_id=request_id).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    record = row(request_id)
    full = mockgen.completion({"messages": messages}, model="mock-slow")["usage"]
    assert record.outcome == UsageRecord.Outcome.CLIENT_GONE
    assert not record.usage_estimated
    assert (record.input_tokens, record.output_tokens) == (full["prompt_tokens"], full["completion_tokens"])
