"""Adapter details the live conformance tests do not reach: translation edge cases, and a
client leaving an Anthropic stream."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import RequestFactory

from billing.models import UsageRecord
from config.errors import InvalidRequest
from proxy import views
from proxy.adapters.base import usage_from_openai
from proxy.models import Provider
from proxy.translate import anthropic, gemini, params
from tenants.services import CreatedKey
from tests.conftest import Catalog, Upstream, user


@pytest.mark.django_db
def test_client_leaving_an_anthropic_stream_is_billed_from_message_delta(
    rf: RequestFactory, key: CreatedKey, catalog: Catalog, anthropic_upstream: Upstream
) -> None:
    catalog.add_http_model("claude", anthropic_upstream, "claude-sonnet-4-20250514", kind=Provider.Kind.ANTHROPIC)
    request = rf.post(
        "/v1/chat/completions",
        data={"model": "claude", "messages": user("hello"), "stream": True},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key.plaintext}"},
    )
    request.request_id = "req-leaves-claude"  # type: ignore[attr-defined]
    response = views.chat_completions(request)
    assert next(iter(response)).startswith(b"data: ")  # the first chunk, then the client is gone
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
    row = UsageRecord.objects.get()
    assert row.outcome == UsageRecord.Outcome.CLIENT_GONE and not row.usage_estimated
    # message_delta usage is cumulative (8, then 15): the last value, never the sum
    assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens, row.output_tokens) == (
        2025,
        1800,
        200,
        15,
    )


def test_gemini_thought_summaries_are_not_the_answer_and_finish_reasons_map() -> None:
    data: dict[str, Any] = {
        "candidates": [
            {
                "content": {"parts": [{"text": "thinking…", "thought": True}, {"text": "42"}], "role": "model"},
                "finishReason": "MAX_TOKENS",
            },
            {"content": {"parts": [{"text": "no"}], "role": "model"}, "finishReason": "SAFETY", "index": 1},
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "thoughtsTokenCount": 7},
    }
    body, usage = gemini.response(data, model="gemini-2.5-pro")
    first, second = body["choices"]
    assert (first["message"]["content"], first["finish_reason"]) == ("42", "length")
    assert second["finish_reason"] == "content_filter"
    assert usage is not None and usage.output_tokens == 9
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 7}


def test_anthropic_refuses_what_it_cannot_do_and_requires_max_tokens() -> None:
    body = {"model": "claude", "messages": user("hi")}
    assert anthropic.request(body, stream=False)["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS
    with pytest.raises(InvalidRequest) as caught:
        params.apply({**body, "logprobs": True}, kind="anthropic", drop=False)
    assert caught.value.param == "logprobs"
    # an image by URL, and several system messages joined
    translated = anthropic.request(
        {
            "model": "claude",
            "messages": [
                {"role": "system", "content": "one"},
                {"role": "developer", "content": [{"type": "text", "text": "two"}]},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}]},
            ],
            "tool_choice": "none",
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
        stream=False,
    )
    assert translated["system"] == "one\n\ntwo"
    assert translated["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}}
    ]
    assert translated["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert translated["tool_choice"] == {"type": "none"}


def test_openai_usage_details_are_read_and_bounded() -> None:
    usage = usage_from_openai(
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}
    )
    assert usage is not None and (usage.input_tokens, usage.cached_input_tokens) == (10, 4)
    # vLLM-style nulls and embeddings' missing completion_tokens
    usage = usage_from_openai({"prompt_tokens": 3, "total_tokens": 3, "prompt_tokens_details": None})
    assert usage is not None and (usage.output_tokens, usage.cached_input_tokens) == (0, 0)
    # a provider claiming more cached tokens than the prompt cannot make the bill negative
    usage = usage_from_openai(
        {"prompt_tokens": 3, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 9}}
    )
    assert usage is not None and usage.uncached_input_tokens == 0
