"""The official openai SDK's Responses calls, and the OpenAI Agents SDK, against Tollway
served as production serves it (gunicorn, gevent workers, real HTTP), for a model passed
through to a provider that serves the Responses API and for one translated to chat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from billing.models import Model, Price, UsageRecord
from proxy.models import Deployment, Provider
from tenants import services
from tests.conftest import UPSTREAM_KEY_ENV, Catalog, Upstream, ledger_settled, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Trip(BaseModel):
    city: str
    days: int


@pytest.fixture
def live(production_env: dict[str, str], catalog: Catalog, mock_upstream: Upstream) -> Iterator[str]:
    """One gunicorn server; ``native`` passes through to the loopback upstream's
    ``/v1/responses``, ``translated`` goes to its ``/v1/chat/completions``."""
    catalog.add_http_model("translated", mock_upstream, "gpt-4.1")
    provider = Provider.objects.create(
        name="loopback-responses",
        kind=Provider.Kind.OPENAI,
        base_url=mock_upstream.base_url,
        api_key_env=UPSTREAM_KEY_ENV,
        serves_responses=True,
    )
    model = Model.objects.create(name="native")
    Price.objects.create(model=model, input_per_mtok=Decimal("8"), output_per_mtok=Decimal("32"))
    Deployment.objects.create(model=model, provider=provider, upstream_model="gpt-4.1")
    proc, base = serve({**production_env, "WEB_CONCURRENCY": "1"})  # one worker: quicker to boot
    try:
        yield base
    finally:
        stop(proc)


@pytest.mark.parametrize("model", ["native", "translated"])
def test_sdk_responses_calls(live: str, key: services.CreatedKey, sdk: Any, model: str) -> None:
    client: openai.OpenAI = sdk(live, key.plaintext)

    # plain
    first = client.responses.create(model=model, input="My name is Ada.", instructions="Be brief.")
    assert first.status == "completed" and first.output_text.startswith("Mock answer:")
    assert first.model == model and first.usage is not None and first.usage.input_tokens > 0

    # streamed through the SDK's helper, whose final response is the completed one
    with client.responses.stream(model=model, input="Stream me a story") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text and final.status == "completed"

    # two turns by previous_response_id
    second = client.responses.create(model=model, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text

    # function calling over two turns
    called = client.responses.create(model=model, input="Use get_weather for Paris", tools=[WEATHER])  # type: ignore[list-item]
    call = called.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"query": "Use get_weather for Paris"}
    answered = client.responses.create(
        model=model,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert answered.output_text.startswith("Mock answer:")

    # text.format json_schema, parsed by the SDK into the model
    parsed = client.responses.parse(model=model, input="Plan a trip", text_format=Trip)
    assert isinstance(parsed.output_parsed, Trip)

    # retrieve, input items, delete
    assert client.responses.retrieve(first.id).output_text == first.output_text
    items = list(client.responses.input_items.list(second.id))
    assert [item.type for item in items] == ["message"]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert client.responses.input_tokens.count(model=model, input="Hello there").input_tokens > 0

    # each call one ledger row, recorded as a Responses call
    ledger_settled(6)
    assert UsageRecord.objects.count() == 6
    assert set(UsageRecord.objects.values_list("api", flat=True)) == {"responses"}
    assert UsageRecord.objects.filter(streamed=True).count() == 1


@pytest.mark.parametrize("model", ["native", "translated"])
def test_agents_sdk_runs_an_agent_with_a_function_tool(
    live: str, key: services.CreatedKey, model: str, mock_upstream: Upstream
) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # tracing would call OpenAI itself
    calls: list[str] = []

    @function_tool
    def get_weather(query: str) -> str:
        """The weather for a place named in the query."""
        calls.append(query)
        return "Sunny, 21 degrees"

    client = openai.AsyncOpenAI(base_url=f"{live}/v1", api_key=key.plaintext, max_retries=0)
    agent = Agent(
        name="Weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=model, openai_client=client),
    )
    mock_upstream.forget()
    result = Runner.run_sync(agent, "Use get_weather for Paris")
    # the model called the tool, the agent ran it, and the model answered with its result
    assert calls == ["Use get_weather for Paris"]
    assert str(result.final_output).startswith("Mock answer:")
    sent = mock_upstream.received()
    path = "/v1/responses" if model == "native" else "/v1/chat/completions"
    assert [r["path"] for r in sent] == [path, path]
    ledger_settled(2)
    assert UsageRecord.objects.filter(api="responses").count() == 2
