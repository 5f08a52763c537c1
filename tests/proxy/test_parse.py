"""Stage 1 and its bounds: every size a client controls is bounded, every bad input is a
400 in OpenAI's shape naming the parameter, and nothing reaches a provider or the ledger."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.test import Client

from billing.models import Model, UsageRecord
from proxy import admit, parse
from proxy.route import catalog_invalidate
from tests.conftest import Api, Catalog, Upstream, sse_events, user
from tests.proxy.test_errors import assert_openai_error

pytestmark = pytest.mark.django_db


def post(api: Api, path: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return api.client.post(path, data=data, content_type="application/json", headers=api.headers())


def nested(levels: int, leaf: Any = "x") -> Any:
    """``leaf`` inside ``levels`` lists."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
def refused(db: None) -> Any:
    yield
    assert not UsageRecord.objects.exists(), "a refused request writes nothing to the ledger"


def cap_model(name: str, cap: int | None) -> None:
    Model.objects.filter(name=name).update(max_output_tokens=cap)
    catalog_invalidate()


@pytest.mark.usefixtures("refused")
class TestOutputBounds:
    @pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
    def test_above_the_models_cap(self, api: Api, catalog: Catalog, param: str) -> None:
        cap_model("gpt-4.1", 1000)
        error = assert_openai_error(api.chat({"model": "gpt-4.1", "messages": user("hi"), param: 1001}), 400)
        assert error["param"] == param and "1000" in error["message"]

    @pytest.mark.parametrize("asked", [2**62, 2**24 + 1])
    def test_absurd_numbers_are_refused_before_admission(self, api: Api, catalog: Catalog, asked: int) -> None:
        # The case: 2**62 on a model without a cap made the admission script fail.
        body = {"model": "gpt-4.1", "messages": user("hi"), "max_tokens": asked}
        assert_openai_error(api.chat(body), 400, "invalid_parameter", "max_tokens")

    def test_the_global_cap_holds_where_the_model_has_none(self, api: Api, catalog: Catalog, settings: Any) -> None:
        settings.TOLLWAY = {**settings.TOLLWAY, "MAX_OUTPUT_TOKENS": 5000}
        body = {"model": "gpt-4.1", "messages": user("hi"), "max_completion_tokens": 5001}
        error = assert_openai_error(api.chat(body), 400, "invalid_parameter", "max_completion_tokens")
        assert "5000" in error["message"]

    @pytest.mark.parametrize("n", [0, 129, 1_000_000, "2", 1.5, True])
    def test_n(self, api: Api, catalog: Catalog, n: Any) -> None:
        assert_openai_error(api.chat({"model": "gpt-4.1", "messages": user("hi"), "n": n}), 400, param="n")

    def test_n_times_max_tokens_is_bounded(self, api: Api, catalog: Catalog) -> None:
        body = {"model": "gpt-4.1", "messages": user("hi"), "n": 128, "max_tokens": 65536}  # 8.4M tokens
        error = assert_openai_error(api.chat(body), 400, "invalid_parameter", "max_tokens")
        assert "n" in error["message"] and "4194304" in error["message"]

    def test_a_prompt_too_large_to_reserve(self, api: Api, catalog: Catalog, settings: Any) -> None:
        settings.TOLLWAY = {**settings.TOLLWAY, "MAX_REQUEST_TOKENS": 2000}
        body = {"model": "gpt-4.1", "messages": user("word " * 3000), "max_tokens": 10}
        assert_openai_error(api.chat(body), 400, "invalid_parameter", "messages")

    def test_every_legacy_prompt_and_best_of_count(self, api: Api, catalog: Catalog, settings: Any) -> None:
        # 4 prompts x best_of 5 x 100 tokens = 2,000 output tokens, over a cap of 1,500
        settings.TOLLWAY = {**settings.TOLLWAY, "MAX_REQUEST_TOKENS": 1500}
        body = {"model": "gpt-4.1", "prompt": ["a", "b", "c", "d"], "best_of": 5, "max_tokens": 100}
        assert_openai_error(post(api, "/v1/completions", body), 400, param="max_tokens")

    @pytest.mark.parametrize("dimensions", [10**12, 8193, 0, -1, "8", 2.0])
    def test_dimensions(self, api: Api, catalog: Catalog, dimensions: Any) -> None:
        body = {"model": "gpt-4.1", "input": "hi", "dimensions": dimensions}
        assert_openai_error(post(api, "/v1/embeddings", body), 400, "invalid_parameter", "dimensions")

    def test_embedding_inputs(self, api: Api, catalog: Catalog) -> None:
        body = {"model": "gpt-4.1", "input": ["x"] * 2049}
        assert_openai_error(post(api, "/v1/embeddings", body), 400, "invalid_parameter", "input")


class TestOutputBoundsAccepted:
    def test_a_models_cap_above_the_global_one_wins(self, api: Api, catalog: Catalog, settings: Any) -> None:
        settings.TOLLWAY = {**settings.TOLLWAY, "MAX_OUTPUT_TOKENS": 5000}
        cap_model("gpt-4.1", 200_000)
        response = api.chat({"model": "gpt-4.1", "messages": user("hi"), "max_tokens": 150_000})
        assert response.status_code == 200, response.content

    def test_the_limits_themselves_are_accepted(self, api: Api, catalog: Catalog) -> None:
        assert api.chat({"model": "gpt-4.1", "messages": user("hi"), "n": 128, "max_tokens": 8}).status_code == 200
        assert len(UsageRecord.objects.get().request_id) == 32
        body = {"model": "gpt-4.1", "input": "hi", "dimensions": 8192}
        response = post(api, "/v1/embeddings", body)
        assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 8192


@pytest.mark.usefixtures("refused")
class TestNesting:
    def test_content_nested_200_levels(self, api: Api, catalog: Catalog) -> None:
        # Parsed fine by orjson, and refused by the upstream encoders (254 levels): a 500 before.
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": nested(200)}]}
        error = assert_openai_error(api.chat(body), 400, "invalid_parameter", "messages")
        assert "128" in error["message"]

    @pytest.mark.parametrize("levels", [254, 1000, 5000])
    def test_deeper_than_any_parser_takes(self, api: Api, catalog: Catalog, levels: int) -> None:
        raw = b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "x": '
        raw += b"[" * levels + b"]" * levels + b"}"
        error = assert_openai_error(post(api, "/v1/chat/completions", raw), 400)
        assert "nested deeper" in error["message"]

    def test_a_deep_tool_schema(self, api: Api, catalog: Catalog) -> None:
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(70):
            schema = {"type": "object", "properties": {"a": schema}}
        tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
        body = {"model": "gpt-4.1", "messages": user("hi"), "tools": [tool]}
        assert_openai_error(api.chat(body), 400, "invalid_parameter", "tools")

    def test_completions_and_embeddings_too(self, api: Api, catalog: Catalog) -> None:
        deep = {"model": "gpt-4.1", "prompt": "x", "suffix": None, "x": nested(300)}
        assert_openai_error(post(api, "/v1/completions", deep), 400, param="x")
        deep = {"model": "gpt-4.1", "input": "x", "x": nested(300)}
        assert_openai_error(post(api, "/v1/embeddings", deep), 400, param="x")


class TestNestingAccepted:
    def test_the_limit_itself_reaches_the_provider(self, api: Api, catalog: Catalog, mock_upstream: Upstream) -> None:
        catalog.add_http_model("remote", mock_upstream, "gpt-4.1")
        # The body is level 1, "x" and its lists the other 127.
        body = {"model": "remote", "messages": user("hi"), "x": nested(127, None)}
        response = api.chat(body)
        assert response.status_code == 200, response.content
        assert mock_upstream.last()["body"]["x"] == body["x"]

    def test_the_probe_agrees_with_a_walk(self) -> None:
        probe = parse.DepthProbe()
        for levels in (1, 2, 63, 64, 65, 127, 128, 129, 200, 253, 254, 300):
            body = {"x": nested(levels - 1, None)} if levels > 1 else {}
            for limit in (1, 2, 64, 128, 250):
                assert probe.within(body, limit) == parse._within(body, limit), (levels, limit)

    def test_the_probe_falls_back_with_a_warning_if_orjson_changes(
        self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        probe = parse.DepthProbe()
        monkeypatch.setattr(probe, "ORJSON_DEPTH", 200)  # as if orjson's limit had moved
        with caplog.at_level(logging.WARNING):
            assert probe.within({"x": nested(20)}, 64) is True
            assert probe.within({"x": nested(100)}, 64) is False
        assert not probe.calibrated()
        assert "checked in Python" in caplog.text


@pytest.mark.usefixtures("refused")
class TestStrings:
    @pytest.mark.parametrize("model", ["gpt-4.1\x00", "\x00", "m" * 257])
    def test_model_names(self, api: Api, catalog: Catalog, model: str) -> None:
        assert_openai_error(api.chat({"model": model, "messages": user("hi")}), 400, "invalid_parameter", "model")

    def test_model_names_on_every_endpoint(self, api: Api, catalog: Catalog) -> None:
        assert_openai_error(post(api, "/v1/completions", {"model": "a\x00", "prompt": "x"}), 400, param="model")
        assert_openai_error(post(api, "/v1/embeddings", {"model": "a\x00", "input": "x"}), 400, param="model")

    @pytest.mark.parametrize("role", [["user"], {"a": 1}, 5, None, True, "wizard", ""])
    def test_role_must_be_a_known_string(self, api: Api, catalog: Catalog, role: Any) -> None:
        body = {"model": "gpt-4.1", "messages": [{"role": role, "content": "hi"}]}
        assert_openai_error(api.chat(body), 400, "invalid_parameter", "messages[0].role")

    @pytest.mark.parametrize(
        ("message", "param"),
        [
            ({"role": "user", "content": 5}, "messages[0].content"),
            ({"role": "user", "content": {"text": "hi"}}, "messages[0].content"),
            ({"role": "user", "content": ["hi"]}, "messages[0].content[0]"),
            ({"role": "user", "content": [{"text": "hi"}]}, "messages[0].content[0]"),
            ({"role": "user", "content": "hi", "name": 7}, "messages[0].name"),
            ({"role": "assistant", "content": None, "tool_calls": "f()"}, "messages[0].tool_calls"),
            ("hi", "messages[0]"),
        ],
    )
    def test_message_shapes(self, api: Api, catalog: Catalog, message: Any, param: str) -> None:
        assert_openai_error(api.chat({"model": "gpt-4.1", "messages": [message]}), 400, "invalid_parameter", param)


class TestTokenPrompts:
    """Issue 17 item 16: ``/v1/completions`` takes token ids, for providers that do."""

    @pytest.mark.parametrize("prompt", [[1, 2, 3, 4, 5], [[1, 2, 3], [4, 5]]])
    @pytest.mark.parametrize("stream", [False, True])
    def test_the_mock_provider_takes_them(self, api: Api, catalog: Catalog, prompt: Any, stream: bool) -> None:
        body = {"model": "gpt-4.1", "prompt": prompt, "max_tokens": 5, "stream": stream}
        response = post(api, "/v1/completions", body)
        assert response.status_code == 200
        if stream:
            assert sse_events(response)[-1] == "[DONE]"
        row = UsageRecord.objects.get()
        assert row.input_tokens == 5, "the ids themselves are the prompt's tokens"
        assert not row.usage_estimated

    def test_an_openai_compatible_provider_gets_them_as_sent(
        self, api: Api, catalog: Catalog, mock_upstream: Upstream
    ) -> None:
        catalog.add_http_model("remote", mock_upstream, "gpt-4.1")
        body = {"model": "remote", "prompt": [[15496, 11], [40, 1101]], "max_tokens": 0, "echo": True, "logprobs": 1}
        response = post(api, "/v1/completions", body)
        assert response.status_code == 200, response.content
        sent = mock_upstream.last()["body"]
        assert sent["prompt"] == [[15496, 11], [40, 1101]] and sent["max_tokens"] == 0
        assert response.json()["usage"]["prompt_tokens"] == 4

    def test_the_reservation_counts_the_ids_and_every_prompt(self, catalog: Catalog) -> None:
        request = parse.ChatRequest(
            body={"prompt": [[1, 2, 3], [4, 5]], "n": 3, "best_of": 2},
            model="m",
            messages=[],
            stream=False,
            include_usage=False,
            endpoint=parse.COMPLETIONS,
        )
        assert (request.prompt_tokens, request.outputs) == (5, 6)
        assert (
            parse.ChatRequest(
                body={"input": [7, 8]},
                model="m",
                messages=[],
                stream=False,
                include_usage=False,
                endpoint=parse.EMBEDDINGS,
            ).prompt_tokens
            == 2
        )

    @pytest.mark.parametrize("kind", ["anthropic", "gemini"])
    def test_a_translated_provider_refuses_them_clearly(
        self, api: Api, catalog: Catalog, kind: str, anthropic_upstream: Upstream, gemini_upstream: Upstream
    ) -> None:
        upstream = anthropic_upstream if kind == "anthropic" else gemini_upstream
        catalog.add_http_model("translated", upstream, "some-model", kind=kind)
        response = post(api, "/v1/completions", {"model": "translated", "prompt": [1, 2, 3]})
        error = assert_openai_error(response, 400, "unsupported_by_provider")
        assert "completions" in error["message"].lower()
        assert not UsageRecord.objects.exists()

    @pytest.mark.parametrize(
        "prompt", [[], [1, "a"], [-1], [2**32], [[1], "a"], [[]], [[1, 2], [3, None]], [True, False], {"ids": [1]}]
    )
    def test_bad_prompts(self, api: Api, catalog: Catalog, prompt: Any) -> None:
        response = post(api, "/v1/completions", {"model": "gpt-4.1", "prompt": prompt})
        assert_openai_error(response, 400, "invalid_parameter", "prompt")
        assert not UsageRecord.objects.exists()


def test_max_output_counts_every_completion(catalog: Catalog, client: Client) -> None:
    # The reservation's output: max_tokens for each of n (or best_of) completions of each prompt.
    request = parse.ChatRequest(
        body={"prompt": ["a", "b"], "n": 2, "max_tokens": 7},
        model="gpt-4.1",
        messages=[],
        stream=False,
        include_usage=False,
        endpoint=parse.COMPLETIONS,
    )
    from proxy.route import plan

    entry, price = plan("gpt-4.1", allows=lambda name: True)[0]
    from proxy.route import Route

    call = type("C", (), {"chat": request, "route": Route(entry=entry, price=price, target=entry.targets[0])})()
    assert admit.max_output(call) == 28
