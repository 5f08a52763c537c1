"""LangChain's ``ChatOpenAI`` against live Tollway (gunicorn), with loopback upstreams of each
kind: invoke, stream with usage (the text arrives once, however the upstream placed its
usage), tools, and structured output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from proxy import mockgen, tokens
from proxy.models import Provider
from tenants import services
from tests.conftest import Catalog, Upstream, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live


class GetWeather(BaseModel):
    """Get the current weather in a given location."""

    location: str = Field(description="The city and state, e.g. San Francisco, CA")
    unit: str | None = Field(default=None, description="celsius or fahrenheit")


class Answer(BaseModel):
    answer: str


@pytest.fixture
def gateway(
    production_env: dict[str, str],
    catalog: Catalog,
    mock_upstream: Upstream,
    anthropic_upstream: Upstream,
    gemini_upstream: Upstream,
) -> Iterator[str]:
    add = catalog.add_http_model
    add("vllm-finish", mock_upstream, "mock-usage-on-finish")
    add("vllm-every", mock_upstream, "mock-usage-on-every")
    add("claude", anthropic_upstream, "claude-sonnet-4-20250514", kind=Provider.Kind.ANTHROPIC)
    add("gemini", gemini_upstream, "gemini-2.5-flash", kind=Provider.Kind.GEMINI)
    proc, base = serve(production_env)
    try:
        yield base
    finally:
        stop(proc)


def chat(base: str, key: services.CreatedKey, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=f"{base}/v1", api_key=key.plaintext, max_retries=0, timeout=30, **kwargs)  # type: ignore[arg-type]  # api_key takes a str at run time


def test_invoke_and_stream_with_usage_say_the_text_once(gateway: str, key: services.CreatedKey) -> None:
    for model in ("gpt-4.1", "vllm-finish", "vllm-every", "claude", "gemini"):
        check_invoke_and_stream(chat(gateway, key, model, stream_usage=True), model)


def check_invoke_and_stream(llm: ChatOpenAI, model: str) -> None:
    prompt = "Say something"
    reply = llm.invoke(prompt)
    assert reply.content and reply.usage_metadata is not None
    merged: AIMessageChunk | None = None
    for chunk in llm.stream(prompt):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    # the whole text once ("Hello world world" was the bug), and usage counted once
    assert merged.content == reply.content
    assert merged.usage_metadata == reply.usage_metadata
    if model.startswith("vllm"):
        text, _ = mockgen.reply([{"role": "user", "content": prompt}], max_tokens=None)
        assert merged.content == text
        assert merged.usage_metadata is not None and merged.usage_metadata["output_tokens"] == tokens.count(text)


def test_tools_with_strict_schemas_and_structured_output(gateway: str, key: services.CreatedKey) -> None:
    for model in ("claude", "gemini"):
        # strict mode adds additionalProperties: false, which Gemini refuses unless Tollway cuts it
        llm = chat(gateway, key, model).bind_tools([GetWeather], strict=True)
        reply = llm.invoke("What is the weather in San Francisco?")
        (call,) = reply.tool_calls
        assert call["name"] == "get_weather" and call["args"]["location"] == "San Francisco, CA"
        assert call["id"]
        streamed: Any = None
        for chunk in llm.stream("What is the weather in San Francisco?"):
            streamed = chunk if streamed is None else streamed + chunk
        assert isinstance(streamed, AIMessageChunk) and streamed.tool_calls[0]["args"] == call["args"]

    # json_schema (LangChain's default): enforced through the forced answer tool on this model
    structured = chat(gateway, key, "claude").with_structured_output(Answer, method="json_schema")
    assert structured.invoke("Capital of France?") == Answer(answer="Paris")
