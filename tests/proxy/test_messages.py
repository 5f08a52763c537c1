"""POST /v1/messages on the built-in mock provider (translated), through Django's client:
Anthropic's shapes in and out, its error shape, both ways of sending the key, and the
same metering as chat."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from billing.models import UsageRecord
from proxy import attempts, tokens
from proxy.messages.parse import prompt_messages
from proxy.models import Deployment, Provider
from tenants.services import CreatedKey
from tests.conftest import Catalog, Upstream

pytestmark = pytest.mark.django_db

HELLO: dict[str, Any] = {
    "model": "gpt-4.1",
    "max_tokens": 64,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "What does Tollway do?"}],
}


def post(client: Client, body: Any, *, key: str | None, path: str = "/v1/messages", bearer: bool = False) -> Any:
    headers = {"anthropic-version": "2023-06-01"}
    if key is not None:
        headers.update({"Authorization": f"Bearer {key}"} if bearer else {"x-api-key": key})
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=headers)


def anthropic_error(response: Any, status: int, kind: str) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind
    assert body["request_id"] == response["request-id"] == response["X-Request-ID"]
    return str(body["error"]["message"])


def events_of(response: Any) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event, as the anthropic SDK reads them."""
    text = b"".join(response.streaming_content).decode()
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n", 1)
        assert name.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == name[len("event: ") :]
        out.append((payload["type"], payload))
    return out


def expected_cost(usage: dict[str, int], price: tuple[Decimal, Decimal]) -> Decimal:
    raw = usage["input_tokens"] * price[0] + usage["output_tokens"] * price[1]
    return (raw / Decimal(1_000_000)).quantize(Decimal("0.000000001"))


def test_a_message_is_answered_in_anthropic_shape_and_billed_once(
    client: Client, key: CreatedKey, catalog: Catalog
) -> None:
    # given a key sent as the anthropic SDK sends it, x-api-key
    response = post(client, HELLO, key=key.plaintext)

    # then the answer is a Messages answer, priced, with one ledger row marked "messages"
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["type"], body["role"], body["model"], body["stop_sequence"]) == (
        "message",
        "assistant",
        "gpt-4.1",
        None,
    )
    assert body["stop_reason"] in ("end_turn", "max_tokens")
    assert body["id"].startswith("msg_")
    (block,) = body["content"]
    assert block["type"] == "text" and block["text"]
    usage = body["usage"]
    # the mock counts the prompt it was sent: the system prompt and the user's message
    sent = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does Tollway do?"}]
    assert usage["input_tokens"] == tokens.prompt_tokens(sent)
    assert usage["output_tokens"] == tokens.count(block["text"])
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (0, 0)
    row = UsageRecord.objects.get()
    assert row.api == UsageRecord.Api.MESSAGES and row.request_id == response["X-Request-ID"]
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (
        usage["input_tokens"],
        usage["output_tokens"],
        False,
    )
    assert row.cost == expected_cost(usage, catalog.price("gpt-4.1")) == Decimal(response["X-Tollway-Cost"])


def test_bearer_works_too_and_a_missing_or_wrong_key_is_anthropics_401(
    client: Client, key: CreatedKey, catalog: Catalog
) -> None:
    assert post(client, HELLO, key=key.plaintext, bearer=True).status_code == 200
    anthropic_error(post(client, HELLO, key=None), 401, "authentication_error")
    wrong = post(client, HELLO, key=key.plaintext[:-2] + "xx")
    anthropic_error(wrong, 401, "authentication_error")
    assert "WWW-Authenticate" not in wrong
    assert UsageRecord.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({k: v for k, v in HELLO.items() if k != "max_tokens"}, "max_tokens"),
        ({**HELLO, "max_tokens": 0}, "max_tokens"),
        ({**HELLO, "messages": []}, "messages"),
        ({**HELLO, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({**HELLO, "messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content.0"),
        ({**HELLO, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "tool_use_id"),
        ({**HELLO, "system": 3}, "system"),
        ({**HELLO, "temperature": 1.5}, "temperature"),
        ({**HELLO, "tools": [{"name": "x"}]}, "input_schema"),
        ({**HELLO, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({**HELLO, "thinking": {"type": "enabled", "budget_tokens": 10}}, "budget_tokens"),
        ({**HELLO, "stream": "yes"}, "stream"),
        ({**HELLO, "model": ""}, "model"),
    ],
)
def test_bad_requests_are_anthropics_400_naming_the_field(
    client: Client, key: CreatedKey, catalog: Catalog, body: dict[str, Any], param: str
) -> None:
    message = anthropic_error(post(client, body, key=key.plaintext), 400, "invalid_request_error")
    assert param in message
    assert not UsageRecord.objects.exists()


def test_not_json_and_wrong_method_answer_in_anthropic_shape(client: Client, key: CreatedKey, catalog: Catalog) -> None:
    anthropic_error(post(client, b"{not json", key=key.plaintext), 400, "invalid_request_error")
    wrong = client.get("/v1/messages", headers={"x-api-key": key.plaintext})
    anthropic_error(wrong, 405, "invalid_request_error")
    assert wrong["Allow"] == "POST"


def test_an_unknown_or_forbidden_model_is_not_found(
    client: Client, key: CreatedKey, catalog: Catalog, make_key: Any, tenant: Any
) -> None:
    anthropic_error(post(client, {**HELLO, "model": "claude-nope"}, key=key.plaintext), 404, "not_found_error")
    # a key limited to another model is told the same as for a model that does not exist
    narrow = make_key(tenant, name="narrow", allowed_models=["deepseek-v3"])
    message = anthropic_error(post(client, HELLO, key=narrow.plaintext), 404, "not_found_error")
    assert "gpt-4.1" in message


def test_an_exhausted_budget_is_a_429_the_sdk_does_not_retry(
    client: Client, catalog: Catalog, make_key: Any, tenant: Any
) -> None:
    # given a key whose budget cannot cover what the call may cost (100,000 tokens at $32/M)
    poor = make_key(tenant, name="poor", monthly_budget_usd=Decimal("0.01"))
    response = post(client, {**HELLO, "max_tokens": 100_000}, key=poor.plaintext)
    anthropic_error(response, 429, "rate_limit_error")
    assert response["x-should-retry"] == "false"
    assert not UsageRecord.objects.exists()


def test_a_stream_is_anthropics_events_in_order_and_billed_as_the_plain_call(
    client: Client, key: CreatedKey, catalog: Catalog
) -> None:
    plain = post(client, HELLO, key=key.plaintext).json()
    response = post(client, {**HELLO, "stream": True}, key=key.plaintext)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    events = events_of(response)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert (start["model"], start["content"], start["stop_reason"]) == ("gpt-4.1", [], None)
    text = "".join(e["delta"]["text"] for name, e in events if name == "content_block_delta")
    assert text == plain["content"][0]["text"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == plain["stop_reason"]
    assert delta["usage"] == plain["usage"]
    streamed, unstreamed = UsageRecord.objects.order_by("-streamed")
    assert streamed.streamed and not unstreamed.streamed
    assert (streamed.input_tokens, streamed.output_tokens, streamed.cost) == (
        unstreamed.input_tokens,
        unstreamed.output_tokens,
        unstreamed.cost,
    )
    assert streamed.api == UsageRecord.Api.MESSAGES and not streamed.usage_estimated


def test_models_answer_in_anthropics_list_shape_when_asked_as_anthropic(
    client: Client, key: CreatedKey, catalog: Catalog
) -> None:
    listing = client.get("/v1/models", headers={"x-api-key": key.plaintext, "anthropic-version": "2023-06-01"}).json()
    assert listing["has_more"] is False
    assert {m["id"] for m in listing["data"]} == {"gpt-4.1", "deepseek-v3"}
    assert all(m["type"] == "model" and m["created_at"].endswith("Z") for m in listing["data"])
    assert (listing["first_id"], listing["last_id"]) == (listing["data"][0]["id"], listing["data"][-1]["id"])
    one = client.get("/v1/models/gpt-4.1", headers={"x-api-key": key.plaintext, "anthropic-version": "2023-06-01"})
    assert one.json()["id"] == "gpt-4.1" and one.json()["type"] == "model"
    missing = client.get("/v1/models/nope", headers={"x-api-key": key.plaintext, "anthropic-version": "2023-06-01"})
    anthropic_error(missing, 404, "not_found_error")
    # without the header: OpenAI's list, as before
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key.plaintext}"}).json()["object"] == "list"


def test_count_tokens_without_an_anthropic_deployment_is_tollways_estimate_and_free(
    client: Client, key: CreatedKey, catalog: Catalog
) -> None:
    body = {k: v for k, v in HELLO.items() if k != "max_tokens"}
    response = post(client, body, key=key.plaintext, path="/v1/messages/count_tokens")
    assert response.status_code == 200, response.content
    assert response.json() == {"input_tokens": tokens.prompt_tokens(prompt_messages(body)), "counted_by": "estimate"}
    assert response["x-tollway-token-count"] == "estimate"
    assert not UsageRecord.objects.exists()
    anthropic_error(
        post(client, {**body, "model": "nope"}, key=key.plaintext, path="/v1/messages/count_tokens"),
        404,
        "not_found_error",
    )


def test_the_api_prefix_serves_it_too(client: Client, key: CreatedKey, catalog: Catalog) -> None:
    assert post(client, HELLO, key=key.plaintext, path="/api/v1/messages").status_code == 200


def test_a_failing_anthropic_deployment_is_retried_on_the_next_before_the_first_byte(
    client: Client, key: CreatedKey, catalog: Catalog, anthropic_upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a model whose first deployment is overloaded (529) and whose second answers
    monkeypatch.setattr(attempts, "sleep", lambda seconds: None)
    model = catalog.add_http_model(
        "claude-retry", anthropic_upstream, "mock-error-529", ("3", "15"), kind=Provider.Kind.ANTHROPIC
    )
    provider = Deployment.objects.get(model=model).provider
    Deployment.objects.create(model=model, provider=provider, upstream_model="claude-sonnet-4-20250514", priority=1)

    # when a streamed Messages call comes
    response = post(client, {**HELLO, "model": "claude-retry", "stream": True}, key=key.plaintext)

    # then the client sees only the second deployment's stream, passed through, and one row
    assert response.status_code == 200 and response["x-tollway-attempts"] == "2"
    events = events_of(response)
    assert (events[0][0], events[-1][0]) == ("message_start", "message_stop")
    assert events[0][1]["message"]["model"] == "claude-retry"
    row = UsageRecord.objects.get()
    assert (row.attempts, row.upstream_model, row.input_tokens, row.output_tokens) == (
        2,
        "claude-sonnet-4-20250514",
        2025,
        15,
    )
    assert (row.cached_input_tokens, row.cache_write_tokens, row.usage_estimated) == (1800, 200, False)
