"""Legacy completions and embeddings: validation, metering, and the /api/v1 prefix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billing.models import UsageRecord
from proxy import tokens
from tests.conftest import Api, Catalog, sse_events
from tests.proxy.test_errors import assert_openai_error

pytestmark = pytest.mark.django_db


def post(api: Api, path: str, body: Any) -> Any:
    return api.client.post(path, data=json.dumps(body), content_type="application/json", headers=api.headers())


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "gpt-4.1"}, "prompt"),
        ("/v1/completions", {"model": "gpt-4.1", "prompt": 3}, "prompt"),
        ("/v1/completions", {"model": "gpt-4.1", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/embeddings", {"model": "gpt-4.1"}, "input"),
        ("/v1/embeddings", {"model": "gpt-4.1", "input": []}, "input"),
        ("/v1/embeddings", {"input": "x"}, "model"),
    ],
)
def test_bad_requests_are_400_and_bill_nothing(api: Api, catalog: Catalog, path: str, body: Any, param: str) -> None:
    assert_openai_error(post(api, path, body), 400, param=param)
    assert not UsageRecord.objects.exists()


def test_embeddings_are_metered_from_the_providers_count(api: Api, catalog: Catalog) -> None:
    response = post(api, "/api/v1/embeddings", {"model": "deepseek-v3", "input": ["hello there", "bye"]})
    assert response.status_code == 200
    body = response.json()
    assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == "deepseek-v3"
    assert body["usage"]["prompt_tokens"] == 3 and "completion_tokens" not in body["usage"]
    row = UsageRecord.objects.get()
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (3, 0, False)
    assert body["usage"]["cost"] == response["X-Tollway-Cost"] == str(row.cost)


def test_legacy_completion_streamed_and_plain_bill_the_same(api: Api, catalog: Catalog) -> None:
    body = {"model": "gpt-4.1", "prompt": "Once upon a time", "max_tokens": 8}
    plain = post(api, "/v1/completions", body).json()
    assert plain["object"] == "text_completion" and plain["choices"][0]["text"]
    events = sse_events(
        post(api, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    )
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == plain["choices"][0]["text"]
    assert events[-2]["usage"]["cost"] == plain["usage"]["cost"]
    first, second = UsageRecord.objects.order_by("created_at")
    assert (first.input_tokens, first.output_tokens, first.cost) == (
        second.input_tokens,
        second.output_tokens,
        second.cost,
    )
    assert plain["usage"]["completion_tokens"] == tokens.count(plain["choices"][0]["text"])


@pytest.mark.parametrize(
    ("path", "body", "api_name"),
    [
        ("/v1/chat/completions", {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]}, "chat"),
        ("/v1/completions", {"model": "gpt-4.1", "prompt": "Once"}, "completions"),
        ("/v1/embeddings", {"model": "deepseek-v3", "input": "hello"}, "embeddings"),
    ],
)
def test_the_ledger_records_the_inbound_api(api: Api, catalog: Catalog, path: str, body: Any, api_name: str) -> None:
    # Given a call through one of the OpenAI endpoints, when it is billed,
    # then its ledger row says which API it came through (finance reads it per API).
    assert post(api, path, body).status_code == 200
    assert UsageRecord.objects.get().api == api_name
