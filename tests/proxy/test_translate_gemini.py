"""The Gemini translation, through Tollway's API against the loopback Gemini upstream (which,
like Google, refuses what it cannot take): tool schemas, thought signatures, safety
blocks, logprobs, reasoning tokens, tool-call ids, thinking settings and embeddings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billing.models import UsageRecord
from proxy.models import Provider
from proxy.translate import gemini
from proxy.translate.gemini_schema import to_gemini
from tests.conftest import ROOT, Api, Catalog, Upstream, sse_events, user

pytestmark = pytest.mark.django_db

# What the Vercel AI SDK sends for a zod schema, and Pydantic's $defs/$ref.
AI_SDK_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "location": {"type": "string", "minLength": 1},
                "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", None]},
                "when": {"$ref": "#/$defs/When"},
                "site": {"type": "string", "format": "uri"},
            },
            "required": ["location", "when"],
            "additionalProperties": False,
            "$defs": {
                "When": {
                    "type": "object",
                    "properties": {"day": {"type": "string", "const": "today"}, "later": {"$ref": "#/$defs/When"}},
                    "additionalProperties": False,
                }
            },
        },
    },
}
GEMINI_PARAMETERS = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "nullable": True},
        "when": {
            "type": "object",
            "properties": {"day": {"type": "string", "enum": ["today"]}, "later": {"type": "object"}},
        },
        "site": {"type": "string"},
    },
    "required": ["location", "when"],
}


@pytest.fixture
def add(catalog: Catalog, gemini_upstream: Upstream) -> Any:
    gemini_upstream.forget()

    def add(name: str, upstream_model: str, **fields: Any) -> None:
        catalog.add_http_model(name, gemini_upstream, upstream_model, kind=Provider.Kind.GEMINI, **fields)

    return add


def stream(api: Api, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = sse_events(api.chat({**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]"
    return [e for e in events if isinstance(e, dict)]


def test_tool_schemas_are_cut_to_geminis_subset(api: Api, add: Any, gemini_upstream: Upstream) -> None:
    add("g", "gemini-2.5-flash")
    body = {"model": "g", "messages": user("weather?"), "tools": [AI_SDK_TOOL]}
    response = api.chat(body)
    # the upstream, like Google, answers 400 to $schema, additionalProperties, $defs, $ref
    assert response.status_code == 200, response.content
    (declaration,) = gemini_upstream.last()["body"]["tools"][0]["functionDeclarations"]
    assert declaration == {"name": "get_weather", "description": "Weather in a city", "parameters": GEMINI_PARAMETERS}
    assert AI_SDK_TOOL["function"]["parameters"]["additionalProperties"] is False, "the request is not modified"


def test_schema_conversion_edge_cases() -> None:
    assert to_gemini({"type": "object", "properties": {}}) == {"type": "object"}
    assert to_gemini({"type": "object", "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}) == {
        "type": "object",
        "properties": {"a": {"type": "integer", "nullable": True}},
    }
    # enums are strings-only on Gemini; arrays need items; allOf of one is merged
    assert to_gemini(
        {
            "properties": {
                "n": {"type": "integer", "enum": [1, 2]},
                "xs": {"type": "array"},
                "m": {"allOf": [{"$ref": "#/definitions/M"}], "description": "an m"},
            },
            "definitions": {"M": {"type": "string", "examples": ["x"]}},
        }
    ) == {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "xs": {"type": "array", "items": {"type": "object"}},
            "m": {"type": "string", "description": "an m"},
        },
    }


def test_thought_signatures_round_trip_in_the_tool_call_id(api: Api, add: Any, gemini_upstream: Upstream) -> None:
    add("g3", "gemini-3-pro-preview")
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    first = {"model": "g3", "messages": user("weather in Paris?"), "tools": [tool]}
    reply = api.chat(first).json()["choices"][0]["message"]
    (call,) = reply["tool_calls"]
    fixture = json.loads((ROOT / "tests/fixtures/gemini/function_call_signature.json").read_text())
    signature = fixture["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
    assert call["id"].startswith("call_") and call["id"].endswith(f"__thought__{signature}")
    assert reply["reasoning_content"].startswith("**Checking the weather**")
    # the next turn carries the call back as an OpenAI client does: Gemini 3 needs its signature
    second = {
        **first,
        "messages": [*first["messages"], reply, {"role": "tool", "tool_call_id": call["id"], "content": "18C"}],
    }
    response = api.chat(second)
    assert response.status_code == 200, response.content
    model_turn = gemini_upstream.last()["body"]["contents"][1]
    assert model_turn["parts"][0] == {
        "functionCall": {"name": "get_weather", "args": {"location": "Paris", "unit": "celsius"}},
        "thoughtSignature": signature,
    }
    # streamed: the same id shape, and the thought summary as reasoning_content
    chunks = stream(api, first)
    streamed_calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert streamed_calls[0]["id"].endswith(f"__thought__{signature}")
    assert "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
    # ids are unique per call: never call_0 again on the next turn
    again = api.chat(first).json()["choices"][0]["message"]["tool_calls"][0]["id"]
    assert len({call["id"], streamed_calls[0]["id"], again}) == 3


def test_history_without_a_signature_gets_googles_stand_in(api: Api, add: Any, gemini_upstream: Upstream) -> None:
    add("g3", "gemini-3-pro-preview")
    call = {"id": "call_from_elsewhere", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        *user("hi"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "ok"},
    ]
    assert api.chat({"model": "g3", "messages": messages}).status_code == 200
    part = gemini_upstream.last()["body"]["contents"][1]["parts"][0]
    assert part["thoughtSignature"] == gemini.DUMMY_SIGNATURE


def test_a_blocked_prompt_is_a_200_content_filter_streamed_or_not(api: Api, add: Any) -> None:
    add("blocked", "mock-blocked")
    body = {"model": "blocked", "messages": user("something dangerous")}
    response = api.chat(body)
    # not a 502, which the SDKs would retry three times
    assert response.status_code == 200, response.content
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] == ""
    assert response.json()["usage"]["prompt_tokens"] == 9
    chunks = stream(api, body)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == ["content_filter"]
    assert chunks[-1]["usage"]["prompt_tokens"] == 9
    rows = UsageRecord.objects.all()
    assert [(r.input_tokens, r.output_tokens, r.usage_estimated) for r in rows] == [(9, 0, False)] * 2


def test_a_candidate_stopped_for_safety_keeps_its_text_and_says_content_filter(api: Api, add: Any) -> None:
    add("unsafe", "mock-safety")
    body = {"model": "unsafe", "messages": user("how to")}
    choice = api.chat(body).json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Here is how the chemistry of", "content_filter")
    chunks = stream(api, body)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == (
        "Here is how the chemistry of"
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "content_filter"


def test_logprobs_come_back_as_openai_logprobs(api: Api, add: Any, gemini_upstream: Upstream) -> None:
    add("g", "gemini-2.5-flash")
    body = {"model": "g", "messages": user("sky?"), "logprobs": True, "top_logprobs": 2}
    logprobs = api.chat(body).json()["choices"][0]["logprobs"]
    assert gemini_upstream.last()["body"]["generationConfig"] == {"responseLogprobs": True, "logprobs": 2}
    assert [t["token"] for t in logprobs["content"]] == ["Blue", " sky", "."]
    first = logprobs["content"][0]
    assert first == {
        "token": "Blue",
        "logprob": -0.0102,
        "bytes": list(b"Blue"),
        "top_logprobs": [
            {"token": "Blue", "logprob": -0.0102, "bytes": list(b"Blue")},
            {"token": "The", "logprob": -4.6011, "bytes": list(b"The")},
        ],
    }
    chunks = stream(api, body)
    streamed = [
        t
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for t in c["choices"][0]["logprobs"]["content"]
    ]
    assert [t["token"] for t in streamed] == ["Blue", " sky", "."]


def test_thoughts_are_reasoning_tokens_in_the_usage(api: Api, add: Any) -> None:
    add("g", "gemini-2.5-flash")
    body = {"model": "g", "messages": user("Why is the sky blue?")}
    usage = api.chat(body).json()["usage"]
    assert usage["completion_tokens"] == 28 and usage["completion_tokens_details"] == {"reasoning_tokens": 18}
    assert stream(api, body)[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 18}


@pytest.mark.parametrize(
    ("upstream_model", "effort", "config"),
    [
        ("gemini-2.5-flash", "low", {"thinkingBudget": 1024, "includeThoughts": True}),
        ("gemini-2.5-flash", "none", {"thinkingBudget": 0, "includeThoughts": False}),
        ("gemini-2.5-flash-lite", "minimal", {"thinkingBudget": 512, "includeThoughts": True}),
        ("gemini-3-pro-preview", "high", {"thinkingLevel": "high", "includeThoughts": True}),
        ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "minimal", "includeThoughts": True}),
    ],
)
def test_reasoning_effort_becomes_a_thinking_config(
    api: Api, add: Any, gemini_upstream: Upstream, upstream_model: str, effort: str, config: dict[str, Any]
) -> None:
    add("g", upstream_model)
    assert api.chat({"model": "g", "messages": user("think"), "reasoning_effort": effort}).status_code == 200
    assert gemini_upstream.last()["body"]["generationConfig"] == {"thinkingConfig": config}


def test_embeddings_refuse_token_ids_with_a_clear_400(api: Api, add: Any, gemini_upstream: Upstream) -> None:
    add("gembed", "gemini-embedding-001")
    before = len(gemini_upstream.received())
    response = api.client.post(
        "/v1/embeddings",
        data=json.dumps({"model": "gembed", "input": [[1, 2, 3]]}),
        content_type="application/json",
        headers=api.headers(),
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input" and "token ids" in response.json()["error"]["message"]
    assert len(gemini_upstream.received()) == before
    # a provider that takes token ids (the built-in mock) counts one token per id
    response = api.client.post(
        "/v1/embeddings",
        data=json.dumps({"model": "gpt-4.1", "input": [[1, 2, 3], [4]]}),
        content_type="application/json",
        headers=api.headers(),
    )
    assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == 4
