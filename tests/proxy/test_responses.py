"""The Responses API (``/v1/responses``) in-process: both routes (passed through to a
provider that serves it, translated to chat for every other), asserted on the exact
upstream request the loopback upstream recorded; stored responses and their tenant
scoping; metering like chat; OpenAI's error shapes; conformance to OpenAI's schemas.

The official SDK and the Agents SDK against a live server are in
``tests/e2e/test_responses_live.py``."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing.models import Model, Price, UsageRecord
from proxy.models import Deployment, Provider, StoredResponse
from proxy.tasks import expire_responses
from tenants import services
from tenants.models import Tenant
from tests.conftest import UPSTREAM_KEY_ENV, Api, Catalog, Upstream, ledger_row
from tests.openapi import validate

pytestmark = pytest.mark.django_db

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "strict": True,
}


def create(api: Api, body: dict[str, Any], prefix: str = "/v1") -> Any:
    return api.client.post(
        f"{prefix}/responses", data=json.dumps(body), content_type="application/json", headers=api.headers()
    )


def events_of(response: Any) -> list[dict[str, Any]]:
    """The typed events of a streamed answer; each ``event:`` line names its data's type."""
    assert response["content-type"] == "text/event-stream"
    text = b"".join(response.streaming_content).decode()
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def conforming(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        validate("ResponseStreamEvent", event)
    return events


def text_of(body: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


@pytest.fixture
def native(catalog: Catalog, mock_upstream: Upstream) -> str:
    """A model whose provider serves the Responses API: passed through."""
    return native_model(catalog, mock_upstream, "native-model", "gpt-4.1")


def native_model(catalog: Catalog, upstream: Upstream, name: str, upstream_model: str) -> str:
    provider, _ = Provider.objects.get_or_create(
        name="loopback-responses",
        defaults={
            "kind": Provider.Kind.OPENAI,
            "base_url": upstream.base_url,
            "api_key_env": UPSTREAM_KEY_ENV,
            "serves_responses": True,
        },
    )
    model = Model.objects.create(name=name)
    Price.objects.create(model=model, input_per_mtok=Decimal("8"), output_per_mtok=Decimal("32"))
    Deployment.objects.create(model=model, provider=provider, upstream_model=upstream_model)
    return name


@pytest.fixture
def chat_only(catalog: Catalog, mock_upstream: Upstream) -> str:
    """A model on an OpenAI-compatible provider that only serves chat: translated."""
    catalog.add_http_model("chat-model", mock_upstream, "gpt-4.1")
    return "chat-model"


# --- the two routes ---------------------------------------------------------------------


def test_translated_route_sends_chat_completions_upstream(api: Api, chat_only: str, mock_upstream: Upstream) -> None:
    # given a model whose provider serves chat completions only
    mock_upstream.forget()
    body = {
        "model": chat_only,
        "instructions": "Answer briefly.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "Answer", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low"},
        "max_output_tokens": 50,
        "temperature": 0.5,
    }
    # when a Responses call is made
    response = create(api, body)
    # then the provider got the equivalent chat completions request
    assert response.status_code == 200, response.content
    sent = mock_upstream.last()
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {
        "model": "gpt-4.1",
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "parameters": WEATHER["parameters"],
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Answer", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
        "max_completion_tokens": 50,
        "temperature": 0.5,
    }
    validate("Response", response.json())


def test_passthrough_route_sends_the_request_as_given(api: Api, native: str, mock_upstream: Upstream) -> None:
    mock_upstream.forget()
    body = {"model": native, "input": "Hello there", "tools": [{"type": "web_search"}], "metadata": {"k": "v"}}
    response = create(api, body)
    assert response.status_code == 200, response.content
    sent = mock_upstream.last()
    # the provider's model name, everything else as the client sent it (built-in tools too)
    assert sent["path"] == "/v1/responses"
    assert sent["body"] == {**body, "model": "gpt-4.1"}
    answer = response.json()
    validate("Response", answer)
    # Tollway's response id and model name, never the provider's
    assert answer["id"].startswith("resp_") and answer["model"] == native
    assert answer["metadata"] == {"k": "v"}
    assert text_of(answer).startswith("Mock answer:")


@pytest.mark.parametrize("route", ["translated", "native"])
def test_streamed_and_plain_are_billed_the_same(api: Api, route: str, native: str, chat_only: str) -> None:
    model = native if route == "native" else chat_only
    plain = create(api, {"model": model, "input": "Count the tolls"})
    assert plain.status_code == 200
    answer = plain.json()
    events = conforming(events_of(create(api, {"model": model, "input": "Count the tolls", "stream": True})))
    # OpenAI's order: created, in_progress, the item and its part, deltas, their ends, completed
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert {e["response"]["id"] for e in events if "response" in e} == {final["id"]}
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text_of(final)
    assert text_of(final) == text_of(answer)
    # the same usage and cost, in the body and in the ledger, one row each, api "responses"
    assert final["usage"] == answer["usage"]
    rows = UsageRecord.objects.filter(tenant__slug="acme").order_by("created_at")
    assert [(r.api, r.streamed, r.usage_estimated) for r in rows] == [
        ("responses", False, False),
        ("responses", True, False),
    ]
    assert rows[0].cost == rows[1].cost == Decimal(answer["usage"]["cost"]) > 0
    assert plain["x-tollway-cost"] == answer["usage"]["cost"]


def test_other_provider_kinds_translate(
    api: Api, catalog: Catalog, anthropic_upstream: Upstream, gemini_upstream: Upstream
) -> None:
    catalog.add_http_model("claude", anthropic_upstream, "claude-sonnet-4-20250514", kind=Provider.Kind.ANTHROPIC)
    catalog.add_http_model("gemini", gemini_upstream, "gemini-2.5-flash", kind=Provider.Kind.GEMINI)
    for model in ("claude", "gemini"):
        for extra in ({}, {"tools": [WEATHER]}):
            plain = create(api, {"model": model, "input": "Hello", "max_output_tokens": 4000, **extra})
            assert plain.status_code == 200, plain.content
            validate("Response", plain.json())
            assert plain.json()["output"]
            events = conforming(events_of(create(api, {"model": model, "input": "Hello", "stream": True, **extra})))
            assert events[-1]["type"] in ("response.completed", "response.incomplete")
            if extra:
                assert any(item["type"] == "function_call" for item in plain.json()["output"])
    # Anthropic's thinking comes back as a reasoning item, streamed as reasoning_text events
    thinking = {"model": "claude", "input": "Think", "reasoning": {"effort": "low"}, "max_output_tokens": 4000}
    answer = create(api, thinking).json()
    assert answer["output"][0]["type"] == "reasoning"
    events = conforming(events_of(create(api, {**thinking, "stream": True})))
    assert "response.reasoning_text.delta" in {e["type"] for e in events}


# --- conversations and tools ------------------------------------------------------------


@pytest.mark.parametrize("route", ["translated", "native"])
def test_previous_response_id_carries_the_conversation(
    api: Api, route: str, native: str, chat_only: str, mock_upstream: Upstream
) -> None:
    model = native if route == "native" else chat_only
    first = create(api, {"model": model, "input": "My name is Ada.", "instructions": "Be kind."}).json()
    mock_upstream.forget()
    second = create(api, {"model": model, "input": "What is my name?", "previous_response_id": first["id"]})
    assert second.status_code == 200, second.content
    assert second.json()["previous_response_id"] == first["id"]
    sent = mock_upstream.last()["body"]
    reply = text_of(first)
    # the upstream gets the whole conversation and never Tollway's id; instructions do not carry over
    assert "previous_response_id" not in sent
    if route == "native":
        assert sent["input"] == [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply, "annotations": []}],
            },
            {"role": "user", "content": "What is my name?"},
        ]
    else:
        assert sent["messages"] == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "What is my name?"},
        ]


@pytest.mark.parametrize("route", ["translated", "native"])
def test_function_calling_over_two_turns(
    api: Api, route: str, native: str, chat_only: str, mock_upstream: Upstream
) -> None:
    model = native if route == "native" else chat_only
    first = create(api, {"model": model, "input": "Use get_weather for Paris", "tools": [WEATHER]}).json()
    [call] = first["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"query": "Use get_weather for Paris"}
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"temp": 21}'}
    second = create(api, {"model": model, "previous_response_id": first["id"], "input": [result], "tools": [WEATHER]})
    assert second.status_code == 200, second.content
    assert text_of(second.json()).startswith("Mock answer:")
    sent = mock_upstream.last()["body"]
    if route == "translated":
        assert sent["messages"][1:] == [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["call_id"],
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call["call_id"], "content": '{"temp": 21}'},
        ]
    else:
        assert sent["input"][1:] == [
            {k: v for k, v in call.items() if k not in ("id", "status")},
            result,
        ]
    # streamed, the call arrives as function_call_arguments events
    events = conforming(
        events_of(create(api, {"model": model, "input": "Use get_weather now", "tools": [WEATHER], "stream": True}))
    )
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert done["arguments"] == deltas == events[-1]["response"]["output"][0]["arguments"]


def test_json_schema_output(api: Api, chat_only: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "Trip", "schema": schema, "strict": True}
    answer = create(api, {"model": chat_only, "input": "Plan a trip", "text": {"format": fmt}}).json()
    assert set(json.loads(text_of(answer))) == {"city", "days"}
    assert answer["text"]["format"] == fmt


def test_builtin_tools_are_refused_where_they_cannot_go(api: Api, chat_only: str, mock_upstream: Upstream) -> None:
    mock_upstream.forget()
    response = create(api, {"model": chat_only, "input": "Search", "tools": [{"type": "web_search"}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tools[0]" and "web_search" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert mock_upstream.received() == [] and not UsageRecord.objects.exists()


# --- stored responses -------------------------------------------------------------------


def test_retrieve_delete_and_input_items(api: Api, catalog: Catalog) -> None:
    items = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
    ]
    answer = create(api, {"model": "gpt-4.1", "input": items, "metadata": {"order": "7"}}).json()
    got = api.get(f"/v1/responses/{answer['id']}")
    assert got.status_code == 200 and got.json() == answer
    validate("Response", got.json())
    listed = api.get(f"/v1/responses/{answer['id']}/input_items?order=asc").json()
    validate("ResponseItemList", listed)
    assert [(i["role"], i["content"][0]["text"]) for i in listed["data"]] == [
        ("developer", "Be brief."),
        ("user", "Hi"),
    ]
    assert listed["first_id"] == listed["data"][0]["id"] and listed["has_more"] is False
    page = api.get(f"/v1/responses/{answer['id']}/input_items?limit=1").json()
    assert [i["role"] for i in page["data"]] == ["user"] and page["has_more"] is True
    deleted = api.client.delete(f"/api/v1/responses/{answer['id']}", headers=api.headers())
    assert deleted.json() == {"id": answer["id"], "object": "response", "deleted": True}
    assert api.get(f"/v1/responses/{answer['id']}").status_code == 404


def test_store_false_keeps_nothing(api: Api, catalog: Catalog) -> None:
    answer = create(api, {"model": "gpt-4.1", "input": "Hi", "store": False}).json()
    assert answer["store"] is False and not StoredResponse.objects.exists()
    missing = api.get(f"/v1/responses/{answer['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_another_tenants_response_answers_404(
    api: Api, catalog: Catalog, other_tenant: Tenant, client: Any, mock_upstream: Upstream
) -> None:
    answer = create(api, {"model": "gpt-4.1", "input": "Secret plans"}).json()
    other = Api(client, services.api_key_create(tenant=other_tenant, name="other").plaintext)
    for response in (
        other.get(f"/v1/responses/{answer['id']}"),
        other.get(f"/v1/responses/{answer['id']}/input_items"),
        other.client.delete(f"/v1/responses/{answer['id']}", headers=other.headers()),
        create(other, {"model": "gpt-4.1", "input": "And?", "previous_response_id": answer["id"]}),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"Response with id '{answer['id']}' not found."
    assert StoredResponse.objects.filter(response_id=answer["id"]).exists()
    assert UsageRecord.objects.filter(tenant=other_tenant).count() == 0


def test_retention_task_deletes_old_responses(api: Api, catalog: Catalog, settings: Any) -> None:
    old = create(api, {"model": "gpt-4.1", "input": "Old"}).json()
    new = create(api, {"model": "gpt-4.1", "input": "New"}).json()
    StoredResponse.objects.filter(response_id=old["id"]).update(created_at=timezone.now() - timedelta(days=31))
    # past retention, it is gone for the API at once, and from the table at the beat
    assert api.get(f"/v1/responses/{old['id']}").status_code == 404
    assert expire_responses() == 1
    assert list(StoredResponse.objects.values_list("response_id", flat=True)) == [new["id"]]


# --- errors and the rest ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "gpt-4.1"}, "input", "missing_required_parameter"),
        ({"model": "gpt-4.1", "input": 7}, "input", "invalid_parameter"),
        ({"model": "gpt-4.1", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_parameter"),
        ({"model": "gpt-4.1", "input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_parameter"),
        ({"model": "gpt-4.1", "input": "x", "previous_response_id": "resp_nope"}, "previous_response_id", "not_found"),
        ({"input": "x"}, "model", "missing_required_parameter"),
    ],
)
def test_bad_requests_answer_openai_errors(
    api: Api, catalog: Catalog, body: dict[str, Any], param: str, code: str
) -> None:
    response = create(api, body)
    assert response.status_code in (400, 404)
    validate("ErrorResponse", response.json())
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code)
    assert not UsageRecord.objects.exists()


def test_failed_stream_ends_with_response_failed_and_is_billed(
    api: Api, catalog: Catalog, mock_upstream: Upstream
) -> None:
    native_model(catalog, mock_upstream, "cut", "mock-cut")
    events = conforming(events_of(create(api, {"model": "cut", "input": "Hello there", "stream": True})))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    row = ledger_row(api="responses")
    assert row.outcome == UsageRecord.Outcome.UPSTREAM_ERROR and row.usage_estimated and row.cost > 0
    assert not StoredResponse.objects.exists()


def test_input_tokens(api: Api, catalog: Catalog) -> None:
    response = api.client.post(
        "/v1/responses/input_tokens",
        data=json.dumps({"model": "gpt-4.1", "input": "Hello there"}),
        content_type="application/json",
        headers=api.headers(),
    )
    validate("TokenCountsResource", response.json())
    assert response.json()["input_tokens"] > 0 and not UsageRecord.objects.exists()


def test_unauthenticated_and_alias(api: Api, catalog: Catalog) -> None:
    anonymous = Api(api.client, None)
    assert create(anonymous, {"model": "gpt-4.1", "input": "Hi"}).status_code == 401
    assert create(api, {"model": "gpt-4.1", "input": "Hi"}, prefix="/api/v1").status_code == 200


def test_max_output_tokens_is_admitted_and_cut_as_incomplete(api: Api, catalog: Catalog) -> None:
    too_many = create(api, {"model": "gpt-4.1", "input": "Hi", "max_output_tokens": 10**9})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "max_output_tokens"
    assert "'max_output_tokens'" in too_many.json()["error"]["message"]
    short = create(api, {"model": "gpt-4.1", "input": "Hi", "max_output_tokens": 3}).json()
    assert short["status"] == "incomplete" and short["incomplete_details"] == {"reason": "max_output_tokens"}
    assert short["usage"]["output_tokens"] == 3 and short["output"][0]["status"] == "incomplete"
    events = conforming(
        events_of(create(api, {"model": "gpt-4.1", "input": "Hi", "max_output_tokens": 3, "stream": True}))
    )
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_response_cache_serves_translated_calls(api: Api, catalog: Catalog) -> None:
    body = {"model": "gpt-4.1", "input": "Cache me", "temperature": 0}
    headers = {**api.headers(), "x-tollway-cache": "use"}

    def post(extra: dict[str, Any]) -> Any:
        data = json.dumps({**body, **extra})
        return api.client.post("/v1/responses", data=data, content_type="application/json", headers=headers)

    miss = post({})
    hit = post({})
    assert (miss["x-tollway-cache"], hit["x-tollway-cache"]) == ("MISS", "HIT")
    validate("Response", hit.json())
    assert text_of(hit.json()) == text_of(miss.json()) and hit.json()["id"] != miss.json()["id"]
    streamed = post({"stream": True})
    assert streamed["x-tollway-cache"] == "HIT"
    events = conforming(events_of(streamed))
    assert text_of(events[-1]["response"]) == text_of(miss.json())
    assert list(UsageRecord.objects.order_by("created_at").values_list("cache_hit", flat=True)) == [False, True, True]


@pytest.mark.parametrize("route", ["translated", "native"])
def test_client_leaving_mid_stream_is_billed_from_the_providers_count(
    rf: Any, key: services.CreatedKey, route: str, native: str, chat_only: str
) -> None:
    from django.core.signals import request_finished
    from django.db import close_old_connections

    from proxy.responses import views

    # given a client that reads three events of a stream and leaves
    model = native if route == "native" else chat_only
    request = rf.post(
        "/v1/responses",
        data={"model": model, "input": "I will leave early", "stream": True},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key.plaintext}"},
    )
    request.request_id = f"req-leaves-{route}"
    response = views.responses_create(request)
    stream = iter(response)
    assert all(next(stream).startswith(b"event: ") for _ in range(3))
    request_finished.disconnect(close_old_connections)  # keep the test's transaction, as the test client does
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
    # then Tollway read on to the provider's usage and billed exactly that
    row = UsageRecord.objects.get()
    assert row.outcome == UsageRecord.Outcome.CLIENT_GONE and not row.usage_estimated
    assert row.api == "responses" and row.output_tokens > 3


def test_only_openai_kind_providers_may_serve_responses(db: None) -> None:
    from django.core.exceptions import ValidationError

    provider = Provider(
        name="claude", kind=Provider.Kind.ANTHROPIC, base_url="https://a.test/v1", serves_responses=True
    )
    with pytest.raises(ValidationError, match="OpenAI-compatible"):
        provider.full_clean()
