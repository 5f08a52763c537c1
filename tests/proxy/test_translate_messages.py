"""Messages ⇄ OpenAI chat (proxy.translate.messages): the requests an OpenAI-shaped adapter
gets, the events a translated stream becomes, and a Gemini deployment reached through it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from billing.models import UsageRecord
from billing.pricing import TokenUsage
from proxy.models import Provider
from proxy.translate import messages as translate
from tenants.services import CreatedKey
from tests.conftest import Catalog, Upstream

CLAUDE_CODE_TOOL: dict[str, Any] = {
    "name": "Read",
    "description": "Reads a file from the local filesystem.",
    "input_schema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}, "limit": {"type": "number"}},
        "required": ["file_path"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    },
}


def test_a_request_becomes_the_chat_body_an_adapter_takes() -> None:
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    body = {
        "model": "tollway-name",
        "max_tokens": 3000,
        "system": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": pdf, "title": "spec.pdf"},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "/b"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "A", "is_error": True},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "B"}]},
                ],
            },
        ],
        "tools": [CLAUDE_CODE_TOOL],
        "tool_choice": {"type": "tool", "name": "Read"},
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "top_k": 3,
        "service_tier": "auto",
    }
    assert translate.request(body, model="gpt-4.1", stream=True) == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "One.\nTwo."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
                    },
                    {"type": "text", "text": "notes"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path": "/a"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path": "/b"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "A"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "B"},
        ],
        "max_tokens": 3000,
        "top_k": 3,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "Read",
                    "description": "Reads a file from the local filesystem.",
                    "parameters": CLAUDE_CODE_TOOL["input_schema"],
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "Read"}},
        "reasoning_effort": "medium",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def test_a_stream_of_chunks_becomes_anthropics_events_block_by_block() -> None:
    events = translate.Events("claude-sonnet-4")
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Let me"}),
        chunk({"content": "Reading."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "Read", "arguments": ""}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"file_path"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "/a"}'}}]}),
        chunk({}, "tool_calls"),
        {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 30}},
    ]
    out = [event for c in chunks for event in events.chunk(c)]
    out += list(events.finish(TokenUsage(input_tokens=30, output_tokens=12, cached_input_tokens=10)))
    start = out[0]
    assert start["type"] == "message_start" and start["message"]["id"].startswith("msg_")
    assert start["message"]["model"] == "claude-sonnet-4" and start["message"]["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
    }
    assert out[1:] == [
        {"type": "ping"},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Reading."}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "call_1", "name": "Read", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"file_path"'},
        },
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ': "/a"}'}},
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {
                "input_tokens": 20,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 10,
                "output_tokens": 12,
            },
        },
        {"type": "message_stop"},
    ]


@pytest.mark.django_db
def test_anthropic_only_content_is_refused_before_any_call(client: Client, key: CreatedKey, catalog: Catalog) -> None:
    base = {"model": "gpt-4.1", "max_tokens": 10}
    refused = [
        {
            **base,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
        {
            **base,
            "messages": [
                {"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}
            ],
        },
        {
            **base,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}],
        },
    ]
    for body in refused:
        response = client.post(
            "/v1/messages", data=json.dumps(body), content_type="application/json", headers={"x-api-key": key.plaintext}
        )
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "Anthropic model" in error["message"]
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db
def test_a_gemini_deployment_answers_through_its_own_adapter(
    client: Client, key: CreatedKey, catalog: Catalog, gemini_upstream: Upstream
) -> None:
    catalog.add_http_model(
        "gemini-http",
        gemini_upstream,
        "gemini-2.5-flash",
        ("0.30", "2.50"),
        kind=Provider.Kind.GEMINI,
        cache_prices=("0.075", None),
    )
    body = {
        "model": "gemini-http",
        "max_tokens": 100,
        "system": "Be brief.",
        "tools": [CLAUDE_CODE_TOOL],
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
    }
    response = client.post(
        "/v1/messages", data=json.dumps(body), content_type="application/json", headers={"x-api-key": key.plaintext}
    )
    assert response.status_code == 200, response.content
    sent = gemini_upstream.last()
    assert sent["path"].endswith("/models/gemini-2.5-flash:generateContent")
    assert sent["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    # the Gemini adapter's own schema cut: Claude Code's $schema and additionalProperties are gone
    parameters = sent["body"]["tools"][0]["functionDeclarations"][0]["parameters"]
    assert "$schema" not in parameters and "additionalProperties" not in parameters
    # the model calls a tool (the fixture's function call): a tool_use block, stop_reason tool_use
    message = response.json()
    (block,) = message["content"]
    assert (block["type"], block["name"], block["input"]) == (
        "tool_use",
        "get_weather",
        {"location": "San Francisco, CA", "unit": "celsius"},
    )
    assert block["id"] and message["stop_reason"] == "tool_use"
    row = UsageRecord.objects.get()
    usage = message["usage"]
    assert row.api == "messages" and not row.usage_estimated
    assert row.input_tokens == usage["input_tokens"] + usage["cache_read_input_tokens"] == 64
    assert row.output_tokens == usage["output_tokens"] == 21
