"""Tollway's answers, for each provider kind, validated against the response schemas of
OpenAI's published OpenAPI document (``tests/openapi``): chat plain and streamed (text,
tools, and each translated provider's special shapes), legacy completions, embeddings as
floats and as base64, models, and errors."""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.models import Provider
from tests.conftest import Api, Catalog, Upstream, sse_events, user
from tests.openapi import validate

pytestmark = pytest.mark.django_db

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


@dataclass
class Kind:
    name: str
    chat: str  # a chat model served by this kind
    embed: str | None  # an embedding model, if the kind has embeddings
    legacy: bool  # whether it serves /v1/completions
    errors: str  # a model name prefix whose suffix is the upstream status to answer


@pytest.fixture(params=["mock", "openai", "anthropic", "gemini"])
def kind(
    request: pytest.FixtureRequest,
    catalog: Catalog,
    mock_upstream: Upstream,
    anthropic_upstream: Upstream,
    gemini_upstream: Upstream,
) -> Kind:
    name = request.param
    if name == "mock":
        return Kind(name, "gpt-4.1", "deepseek-v3", True, "")
    upstream, provider_kind, chat, embed = {
        "openai": (mock_upstream, Provider.Kind.OPENAI, "gpt-4.1", "text-embedding-3-small"),
        "anthropic": (anthropic_upstream, Provider.Kind.ANTHROPIC, "claude-sonnet-4-20250514", None),
        "gemini": (gemini_upstream, Provider.Kind.GEMINI, "gemini-2.5-flash", "gemini-embedding-001"),
    }[name]
    catalog.add_http_model(f"{name}-chat", upstream, chat, kind=provider_kind)
    if embed:
        catalog.add_http_model(f"{name}-embed", upstream, embed, kind=provider_kind)
    for status in (400, 429, 500):
        catalog.add_http_model(f"{name}-error-{status}", upstream, f"mock-error-{status}", kind=provider_kind)
    return Kind(name, f"{name}-chat", f"{name}-embed" if embed else None, name == "openai", f"{name}-error-")


def post(api: Api, path: str, body: dict[str, Any]) -> Any:
    return api.client.post(f"/v1/{path}", data=json.dumps(body), content_type="application/json", headers=api.headers())


def chunks_of(response: Any) -> list[dict[str, Any]]:
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    return [e for e in events if isinstance(e, dict)]


def test_chat_plain_and_streamed(api: Api, kind: Kind) -> None:
    for extra in ({}, {"tools": [TOOL]}):
        response = api.chat({"model": kind.chat, "messages": user("hello"), **extra})
        assert response.status_code == 200, response.content
        validate("CreateChatCompletionResponse", response.json())
        streamed = api.chat(
            {
                "model": kind.chat,
                "messages": user("hello"),
                "stream": True,
                "stream_options": {"include_usage": True},
                **extra,
            }
        )
        chunks = chunks_of(streamed)
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_legacy_completions(api: Api, kind: Kind) -> None:
    model = kind.chat
    response = post(api, "completions", {"model": model, "prompt": "Say hi", "max_tokens": 5})
    if not kind.legacy:
        assert response.status_code == 400
        validate("ErrorResponse", response.json())
        return
    validate("CreateCompletionResponse", response.json())
    streamed = post(
        api,
        "completions",
        {"model": model, "prompt": "Say hi", "stream": True, "stream_options": {"include_usage": True}},
    )
    chunks = chunks_of(streamed)
    for chunk in chunks:
        # The document reuses the plain answer's schema for streamed chunks, whose
        # finish_reason and usage are null until the last ones (as OpenAI's API sends them).
        choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]
        fields = {k: v for k, v in chunk.items() if not (k == "usage" and v is None)}
        validate("CreateCompletionResponse", {**fields, "choices": choices})
    assert [c for c in chunks if c["choices"]][-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_embeddings_as_floats_and_as_base64(api: Api, kind: Kind) -> None:
    if kind.embed is None:
        response = post(api, "embeddings", {"model": kind.chat, "input": "x"})
        assert response.status_code == 400
        validate("ErrorResponse", response.json())
        return
    floats = post(api, "embeddings", {"model": kind.embed, "input": ["one", "two"], "dimensions": 8})
    assert floats.status_code == 200, floats.content
    validate("CreateEmbeddingResponse", floats.json())
    encoded = post(
        api, "embeddings", {"model": kind.embed, "input": ["one", "two"], "dimensions": 8, "encoding_format": "base64"}
    ).json()
    # The document models only the float form; base64 is the same object with the vector
    # as the base64 of little-endian float32s, which decodes to the float answer.
    for item, plain in zip(encoded["data"], floats.json()["data"], strict=True):
        raw = base64.b64decode(item["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(plain["embedding"], abs=1e-6)
        validate("CreateEmbeddingResponse", {**encoded, "data": [{**item, "embedding": list(decoded)}]})


def test_errors(api: Api, kind: Kind) -> None:
    statuses = (400, 429, 500) if kind.errors else ()
    for status in statuses:
        response = api.chat({"model": f"{kind.errors}{status}", "messages": user("x")})
        assert response.status_code >= 400
        validate("ErrorResponse", response.json())
    response = api.chat({"model": kind.chat, "messages": user("x"), "temperature": 0.5, "logit_bias": {"1": 5}})
    if kind.name in ("anthropic", "gemini"):
        assert response.status_code == 400 and response.json()["error"]["param"] == "logit_bias"
    validate("ErrorResponse" if response.status_code >= 400 else "CreateChatCompletionResponse", response.json())


def test_models_and_the_unknown_model(api: Api, kind: Kind) -> None:
    listing = api.get("/v1/models").json()
    validate("ListModelsResponse", listing)
    validate("Model", api.get(f"/v1/models/{kind.chat}").json())
    missing = api.get("/v1/models/no-such-model")
    assert missing.status_code == 404
    validate("ErrorResponse", missing.json())


@pytest.mark.parametrize(
    ("provider_kind", "upstream_model", "extra"),
    [
        (Provider.Kind.GEMINI, "mock-blocked", {}),
        (Provider.Kind.GEMINI, "mock-safety", {}),
        (Provider.Kind.GEMINI, "gemini-2.5-flash", {"logprobs": True, "top_logprobs": 1}),
        (Provider.Kind.GEMINI, "gemini-3-pro-preview", {"tools": [TOOL], "reasoning_effort": "low"}),
        (Provider.Kind.ANTHROPIC, "claude-sonnet-4-20250514", {"reasoning_effort": "low"}),
        (
            Provider.Kind.ANTHROPIC,
            "claude-sonnet-4-20250514",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}},
        ),
        (
            Provider.Kind.ANTHROPIC,
            "claude-sonnet-4-5-20250929",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}},
        ),
    ],
)
def test_translated_special_shapes(
    api: Api,
    catalog: Catalog,
    anthropic_upstream: Upstream,
    gemini_upstream: Upstream,
    provider_kind: str,
    upstream_model: str,
    extra: dict[str, Any],
) -> None:
    upstream = gemini_upstream if provider_kind == Provider.Kind.GEMINI else anthropic_upstream
    catalog.add_http_model("special", upstream, upstream_model, kind=provider_kind)
    body = {"model": "special", "messages": user("hello"), **extra}
    response = api.chat(body)
    assert response.status_code == 200, response.content
    validate("CreateChatCompletionResponse", response.json())
    for chunk in chunks_of(api.chat({**body, "stream": True, "stream_options": {"include_usage": True}})):
        validate("CreateChatCompletionStreamResponse", chunk)
