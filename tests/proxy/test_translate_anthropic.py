"""The Anthropic translation, through Tollway's API against the loopback Anthropic upstream
(which, like Anthropic, refuses what it cannot take): structured outputs and the forced
answer tool, ``refusal: null``, thinking blocks and their signatures, reasoning_effort."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.models import Provider
from proxy.translate import anthropic
from tests.conftest import ROOT, Api, Catalog, Upstream, sse_events, user

pytestmark = pytest.mark.django_db

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}}
THINKING = json.loads((ROOT / "tests/fixtures/anthropic/thinking.json").read_text())["content"][0]


@pytest.fixture
def add(catalog: Catalog, anthropic_upstream: Upstream) -> Any:
    anthropic_upstream.forget()

    def add(name: str, upstream_model: str) -> None:
        catalog.add_http_model(name, anthropic_upstream, upstream_model, kind=Provider.Kind.ANTHROPIC)

    return add


def stream(api: Api, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = sse_events(api.chat({**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]"
    return [e for e in events if isinstance(e, dict)]


def content_of(chunks: list[dict[str, Any]], field: str = "content") -> str:
    return "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks if c["choices"])


@pytest.mark.parametrize(
    ("version", "native"),
    [
        ("claude-sonnet-4-5-20250929", True),
        ("claude-opus-4-1-20250805", True),
        ("claude-haiku-4-5", True),
        ("claude-sonnet-5", True),
        ("claude-sonnet-4-20250514", False),
        ("claude-3-7-sonnet-20250219", False),
    ],
)
def test_which_models_have_structured_outputs(version: str, native: bool) -> None:
    assert anthropic.structured_outputs(version) is native


def test_a_json_schema_is_enforced_natively_where_the_model_can(
    api: Api, add: Any, anthropic_upstream: Upstream
) -> None:
    add("claude-45", "claude-sonnet-4-5-20250929")
    body = {"model": "claude-45", "messages": user("Capital of France?"), "response_format": JSON_SCHEMA}
    reply = api.chat(body).json()["choices"][0]
    sent = anthropic_upstream.last()["body"]
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "system" not in sent and "tools" not in sent, "no instruction, no tool: the provider enforces it"
    assert json.loads(reply["message"]["content"]) == {"answer": "Paris"} and reply["finish_reason"] == "stop"
    assert json.loads(content_of(stream(api, body))) == {"answer": "Paris"}


def test_older_models_answer_through_a_forced_tool_as_content(api: Api, add: Any, anthropic_upstream: Upstream) -> None:
    add("claude-4", "claude-sonnet-4-20250514")
    body = {"model": "claude-4", "messages": user("Capital of France?"), "response_format": JSON_SCHEMA}
    response = api.chat(body).json()
    sent = anthropic_upstream.last()["body"]
    assert sent["tools"] == [
        {"name": "final_answer", "description": anthropic.ANSWER_TOOL_DESCRIPTION, "input_schema": SCHEMA}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "final_answer"}
    # the tool's input is the answer: content, not a tool call, and a plain stop
    (choice,) = response["choices"]
    assert json.loads(choice["message"]["content"]) == {"answer": "Paris"}
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"
    chunks = stream(api, body)
    assert json.loads(content_of(chunks)) == {"answer": "Paris"}
    assert not any(c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_json_object_stays_an_instruction(api: Api, add: Any, anthropic_upstream: Upstream) -> None:
    add("claude-4", "claude-sonnet-4-20250514")
    body = {"model": "claude-4", "messages": user("json"), "response_format": {"type": "json_object"}}
    assert api.chat(body).status_code == 200
    assert anthropic_upstream.last()["body"]["system"] == "Respond with a single JSON object and nothing else."


def test_translated_answers_carry_refusal_null(api: Api, add: Any) -> None:
    add("claude-4", "claude-sonnet-4-20250514")
    message = api.chat({"model": "claude-4", "messages": user("hi")}).json()["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None


def test_thinking_is_kept_as_reasoning_content_with_its_signature(
    api: Api, add: Any, anthropic_upstream: Upstream
) -> None:
    add("claude-4", "claude-sonnet-4-20250514")
    body = {"model": "claude-4", "messages": user("GCD of 1071 and 462?"), "reasoning_effort": "low"}
    message = api.chat(body).json()["choices"][0]["message"]
    sent = anthropic_upstream.last()["body"]
    # reasoning_effort is a thinking budget inside max_tokens (with room to answer)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["max_tokens"] == 1024 + anthropic.DEFAULT_MAX_TOKENS
    assert message["content"] == "The greatest common divisor of 1071 and 462 is **21**."
    assert message["reasoning_content"] == THINKING["thinking"]
    assert message["thinking_blocks"] == [THINKING]
    # streamed: the thinking as reasoning_content deltas, then the signed block whole
    chunks = stream(api, body)
    assert content_of(chunks, "reasoning_content") == THINKING["thinking"]
    assert content_of(chunks) == message["content"]
    blocks = [b for c in chunks if c["choices"] for b in c["choices"][0]["delta"].get("thinking_blocks") or []]
    assert blocks == [THINKING]


def test_a_later_turn_sends_the_signed_thinking_back(api: Api, add: Any, anthropic_upstream: Upstream) -> None:
    add("claude-4", "claude-sonnet-4-20250514")
    call = {"id": "toolu_1", "type": "function", "function": {"name": "gcd", "arguments": '{"a": 1071, "b": 462}'}}
    assistant = {"role": "assistant", "content": None, "tool_calls": [call], "thinking_blocks": [THINKING]}
    tool = {"type": "function", "function": {"name": "gcd", "parameters": {"type": "object"}}}
    body = {
        "model": "claude-4",
        "messages": [*user("GCD?"), assistant, {"role": "tool", "tool_call_id": "toolu_1", "content": "21"}],
        "tools": [tool],
        "reasoning_effort": "low",
    }
    # the upstream, like Anthropic, refuses a tool-using turn that lost its signed thinking
    response = api.chat(body)
    assert response.status_code == 200, response.content
    turn = anthropic_upstream.last()["body"]["messages"][1]
    assert turn["content"][0] == THINKING and turn["content"][1]["type"] == "tool_use"


def test_reasoning_effort_must_leave_room_under_max_tokens(api: Api, add: Any, anthropic_upstream: Upstream) -> None:
    add("claude-4", "claude-sonnet-4-20250514")
    body = {"model": "claude-4", "messages": user("x"), "reasoning_effort": "high", "max_completion_tokens": 3000}
    assert api.chat(body).status_code == 200
    assert anthropic_upstream.last()["body"]["thinking"] == {"type": "enabled", "budget_tokens": 2999}
    before = len(anthropic_upstream.received())
    response = api.chat({**body, "max_completion_tokens": 500})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_completion_tokens"
    response = api.chat({**body, "reasoning_effort": "extreme"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_effort"
    assert api.chat({**body, "reasoning_effort": "none"}).status_code == 200
    assert "thinking" not in anthropic_upstream.last()["body"]
    assert len(anthropic_upstream.received()) == before + 1
