"""Issue 17 item 15: the documented parameters are type- and range-checked (OpenAI's
OpenAPI document, version 2.3.0), a bad one is a 400 naming it, and parameters Tollway does
not know still reach an OpenAI-compatible provider untouched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billing.models import UsageRecord
from tests.conftest import Api, Catalog, Upstream, user
from tests.proxy.test_errors import assert_openai_error

pytestmark = pytest.mark.django_db

CHAT = {"model": "gpt-4.1", "messages": user("hi")}
FUNCTION = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

BAD_CHAT: list[tuple[str, Any, str]] = [
    ("temperature", "hot", "temperature"),
    ("temperature", 2.5, "temperature"),
    ("temperature", -0.1, "temperature"),
    ("temperature", True, "temperature"),
    ("top_p", 1.01, "top_p"),
    ("top_p", [1], "top_p"),
    ("frequency_penalty", -2.5, "frequency_penalty"),
    ("presence_penalty", "0", "presence_penalty"),
    ("logprobs", "yes", "logprobs"),
    ("logprobs", 1, "logprobs"),
    ("top_logprobs", 21, "top_logprobs"),
    ("top_logprobs", -1, "top_logprobs"),
    ("seed", 1.5, "seed"),
    ("seed", 2**63, "seed"),
    ("stop", 5, "stop"),
    ("stop", [1], "stop"),
    ("stop", ["s"] * 17, "stop"),
    ("logit_bias", [1], "logit_bias"),
    ("logit_bias", {"50256": 101}, "logit_bias.50256"),
    ("logit_bias", {"50256": "x"}, "logit_bias.50256"),
    ("user", 5, "user"),
    ("metadata", {"a": 1}, "metadata"),
    ("metadata", "a=1", "metadata"),
    ("safety_identifier", "x" * 65, "safety_identifier"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", "16", "max_tokens"),
    ("max_completion_tokens", 1.0, "max_completion_tokens"),
    ("n", 0, "n"),
    ("tools", "search", "tools"),
    ("tools", [5], "tools[0]"),
    ("tools", [{"function": {"name": "f"}}], "tools[0].type"),
    ("tools", [{"type": "function"}], "tools[0].function"),
    ("tools", [{"type": "function", "function": {"name": 5}}], "tools[0].function.name"),
    ("tools", [{"type": "function", "function": {"name": ""}}], "tools[0].function.name"),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "tools[0].function.parameters"),
    ("tools", [FUNCTION, {"type": "function", "function": {"name": "g", "strict": "yes"}}], "tools[1].function.strict"),
    ("tools", [{"type": "custom", "custom": {}}], "tools[0].custom.name"),
    ("tool_choice", "sometimes", "tool_choice"),
    ("tool_choice", {"type": "function"}, "tool_choice.function"),
    ("tool_choice", {"type": "function", "function": {}}, "tool_choice.function.name"),
    ("tool_choice", {"function": {"name": "f"}}, "tool_choice.type"),
    ("tool_choice", 1, "tool_choice"),
    ("parallel_tool_calls", "no", "parallel_tool_calls"),
    ("functions", [], "functions"),
    ("functions", [{"description": "no name"}], "functions[0].name"),
    ("function_call", "sometimes", "function_call"),
    ("function_call", {"nom": "f"}, "function_call.name"),
    ("response_format", "json", "response_format"),
    ("response_format", {"type": 1}, "response_format.type"),
    ("response_format", {"type": "json_schema"}, "response_format.json_schema"),
    ("response_format", {"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
    (
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "a", "schema": []}},
        "response_format.json_schema.schema",
    ),
    ("reasoning_effort", 5, "reasoning_effort"),
    ("service_tier", ["auto"], "service_tier"),
    ("verbosity", False, "verbosity"),
    ("modalities", "text", "modalities"),
    ("store", "no", "store"),
    ("prediction", "draft", "prediction"),
    ("prediction", {"type": "content", "content": 5}, "prediction.content"),
    ("audio", "wav", "audio"),
    ("web_search_options", [], "web_search_options"),
    ("prompt_cache_key", 1, "prompt_cache_key"),
]


@pytest.mark.parametrize(("name", "value", "param"), BAD_CHAT)
def test_a_bad_chat_parameter_is_a_400_naming_it(api: Api, catalog: Catalog, name: str, value: Any, param: str) -> None:
    error = assert_openai_error(api.chat({**CHAT, name: value}), 400, "invalid_parameter", param)
    assert error["type"] == "invalid_request_error"
    assert not UsageRecord.objects.exists()


def test_stream_options_are_checked(api: Api, catalog: Catalog) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": "yes"}}
    assert_openai_error(api.chat(body), 400, "invalid_parameter", "stream_options.include_usage")
    body = {**CHAT, "stream": True, "stream_options": []}
    assert_openai_error(api.chat(body), 400, "invalid_parameter", "stream_options")


def post(api: Api, path: str, body: Any) -> Any:
    return api.client.post(path, data=json.dumps(body), content_type="application/json", headers=api.headers())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("logprobs", 6),
        ("logprobs", True),
        ("best_of", 21),
        ("echo", "yes"),
        ("suffix", 5),
        ("max_tokens", -1),
        ("temperature", "hot"),
        ("n", 129),
        ("stop", {"a": 1}),
    ],
)
def test_a_bad_completions_parameter_is_a_400_naming_it(api: Api, catalog: Catalog, name: str, value: Any) -> None:
    response = post(api, "/v1/completions", {"model": "gpt-4.1", "prompt": "x", name: value})
    assert_openai_error(response, 400, "invalid_parameter", name)


@pytest.mark.parametrize(
    ("name", "value"), [("encoding_format", "hex"), ("encoding_format", 1), ("user", 5), ("dimensions", "8")]
)
def test_a_bad_embeddings_parameter_is_a_400_naming_it(api: Api, catalog: Catalog, name: str, value: Any) -> None:
    response = post(api, "/v1/embeddings", {"model": "gpt-4.1", "input": "x", name: value})
    assert_openai_error(response, 400, "invalid_parameter", name)


# Every documented chat parameter with a valid value, and a few the table does not know.
GOOD_CHAT: dict[str, Any] = {
    "temperature": 0,
    "top_p": 1,
    "frequency_penalty": -2,
    "presence_penalty": 2.0,
    "logprobs": True,
    "top_logprobs": 20,
    "seed": -(2**63),
    "stop": ["\n\n", "END"],
    "logit_bias": {"50256": -100, "11": 5.5},
    "user": "user-1",
    "metadata": {"team": "search"},
    "safety_identifier": "h" * 64,
    "max_completion_tokens": 64,
    "n": 2,
    "tools": [FUNCTION, {"type": "custom", "custom": {"name": "grammar", "format": {"type": "text"}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
    "reasoning_effort": "a-level-from-the-future",
    "service_tier": "flex",
    "verbosity": "low",
    "modalities": ["text"],
    "store": False,
    "prediction": {"type": "content", "content": "draft"},
    "prompt_cache_key": "k",
    "web_search_options": {},
    "seed_of_a_vendor": {"any": ["shape"]},  # unknown: passes through
    "guided_json": {"type": "object"},  # vLLM's
    "top_k": 40,
}


def test_valid_parameters_and_unknown_ones_reach_an_openai_compatible_provider(
    api: Api, catalog: Catalog, mock_upstream: Upstream
) -> None:
    catalog.add_http_model("remote", mock_upstream, "gpt-4.1")
    body = {"model": "remote", "messages": user("hi"), **GOOD_CHAT}
    response = api.chat(body)
    assert response.status_code == 200, response.content
    sent = mock_upstream.last()["body"]
    assert sent == {**body, "model": "gpt-4.1"}, "sent upstream exactly as given"


@pytest.mark.parametrize(("name", "value"), [(k, None) for k in GOOD_CHAT])
def test_null_is_accepted_for_every_optional_parameter(api: Api, catalog: Catalog, name: str, value: Any) -> None:
    assert api.chat({**CHAT, name: value}).status_code == 200


def test_valid_completions_and_embeddings_parameters(api: Api, catalog: Catalog) -> None:
    body = {"model": "gpt-4.1", "prompt": "x", "logprobs": 5, "best_of": 2, "echo": False, "suffix": "!", "seed": 1}
    assert post(api, "/v1/completions", body).status_code == 200
    body = {"model": "gpt-4.1", "input": ["a", "b"], "encoding_format": "float", "dimensions": 16, "user": "u"}
    assert post(api, "/v1/embeddings", body).status_code == 200
