"""Hostile bodies and schema fuzzing (Hypothesis, seeded and bounded): whatever a client
sends to chat, completions, embeddings, responses, models or the management API, the answer is never
a 5xx, and every error has OpenAI's shape.

The bodies mix the documented parameters with values of every JSON type (huge integers,
NUL characters, deep nesting, wrong shapes) and keys Tollway does not know. The runs are
derandomized, so a failure reproduces; ``FUZZ_EXAMPLES`` scales them.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenants import services
from tenants.models import Tenant
from tests.conftest import Catalog

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["", "\x00", "gpt-4.1", "user", "assistant", "function", "json_schema", "auto", "none", "a" * 300]
)
NUMBERS = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 128, 129, 2**31, 2**53 + 1, 2**62, 2**63, 2**64 - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)

CHAT_PARAMS = [
    "temperature", "top_p", "n", "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options",
    "logprobs", "top_logprobs", "seed", "logit_bias", "user", "metadata", "tools", "tool_choice",
    "parallel_tool_calls", "functions", "function_call", "response_format", "reasoning_effort", "service_tier",
    "modalities", "prediction", "frequency_penalty", "presence_penalty", "store", "audio", "safety_identifier",
]  # fmt: skip
COMPLETION_PARAMS = ["suffix", "echo", "best_of", "logprobs", "max_tokens", "n", "stream", "temperature"]
EMBEDDING_PARAMS = ["dimensions", "encoding_format", "user"]

MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"]) | JSON},
    optional={"content": JSON | TEXT, "name": JSON, "tool_calls": JSON, "tool_call_id": JSON},
)
MESSAGES = st.lists(MESSAGE, min_size=1, max_size=3) | JSON


def body_of(required: dict[str, Any], params: list[str]) -> Any:
    """A body with ``required`` strategies and any of ``params`` (and unknown keys), each a
    plausible or hostile value."""
    return st.fixed_dictionaries(
        required,
        optional={name: JSON for name in params} | {"x-unknown": JSON},
    )


MODEL = st.sampled_from(["gpt-4.1", "deepseek-v3"]) | JSON
CHAT = body_of({"model": MODEL, "messages": MESSAGES}, CHAT_PARAMS)
COMPLETION = body_of({"model": MODEL, "prompt": JSON | st.lists(st.integers(-5, 2**40), max_size=5)}, COMPLETION_PARAMS)
EMBEDDING = body_of({"model": MODEL, "input": JSON | TEXT}, EMBEDDING_PARAMS)
RESPONSES_PARAMS = [
    "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "max_output_tokens",
    "temperature", "top_p", "store", "previous_response_id", "include", "metadata", "truncation", "user",
    "stream", "stream_options", "top_logprobs", "background", "conversation",
]  # fmt: skip
ITEM = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "web_search_call"])
        | JSON,
        "role": st.sampled_from(["user", "assistant", "developer"]) | JSON,
        "content": JSON | TEXT,
        "call_id": JSON,
        "name": JSON,
        "arguments": JSON,
        "output": JSON,
    },
)
RESPONSES = body_of({"model": MODEL, "input": st.lists(ITEM, min_size=1, max_size=3) | JSON | TEXT}, RESPONSES_PARAMS)


@pytest.fixture
def token(tenant: Tenant) -> str:
    return services.api_key_create(tenant=tenant, name="fuzz", scopes=["inference", "manage", "billing"]).plaintext


def assert_answered(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])
    if response.status_code >= 400 and response["Content-Type"].startswith("application/json"):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
    if response.get("Content-Type", "").startswith("text/event-stream"):
        events = b"".join(response.streaming_content).decode().strip().split("\n\n")
        ended = ("data: [DONE]", "event: response.completed", "event: response.incomplete", "event: response.failed")
        assert events[-1].startswith(ended) or '"error"' in events[-1], events[-1]


def post(client: Client, token: str, path: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers={"Authorization": f"Bearer {token}"})


def test_chat(client: Client, catalog: Catalog, token: str) -> None:
    @FUZZ
    @given(body=CHAT)
    def run(body: Any) -> None:
        assert_answered(post(client, token, "/v1/chat/completions", body))

    run()


def test_completions(client: Client, catalog: Catalog, token: str) -> None:
    @FUZZ
    @given(body=COMPLETION)
    def run(body: Any) -> None:
        assert_answered(post(client, token, "/v1/completions", body))

    run()


def test_embeddings(client: Client, catalog: Catalog, token: str) -> None:
    @FUZZ
    @given(body=EMBEDDING)
    def run(body: Any) -> None:
        assert_answered(post(client, token, "/v1/embeddings", body))

    run()


def test_responses(client: Client, catalog: Catalog, token: str) -> None:
    @FUZZ
    @given(body=RESPONSES, path=st.sampled_from(["/v1/responses", "/v1/responses/input_tokens"]))
    def run(body: Any, path: str) -> None:
        assert_answered(post(client, token, path, body))

    run()


def test_raw_bodies(client: Client, catalog: Catalog, token: str) -> None:
    nested = st.integers(1, 3000).map(lambda n: b'{"model": "gpt-4.1", "messages": ' + b"[" * n + b"]" * n + b"}")

    @FUZZ
    @given(
        raw=st.binary(max_size=200) | nested,
        path=st.sampled_from(["chat/completions", "completions", "embeddings", "responses"]),
    )
    def run(raw: bytes, path: str) -> None:
        assert_answered(post(client, token, f"/v1/{path}", raw))

    run()


SEGMENT = st.text(max_size=10).map(lambda s: quote(s, safe=""))


def test_models_and_the_management_api(client: Client, catalog: Catalog, token: str) -> None:
    paths = st.sampled_from(
        [
            "/v1/models/{s}",
            "/v1/keys/{s}",
            "/v1/keys/{s}/rotate",
            "/v1/invoices/{s}",
            "/v1/responses/{s}",
            "/v1/responses/{s}/input_items?limit={s}&after={s}&order={s}",
            "/v1/invoices/{s}.pdf",
            "/v1/invoices/{s}.csv",
            "/v1/keys?after={s}&limit={s}",
            "/v1/invoices?period={s}&after={s}",
            "/v1/usage?start={s}&end={s}&group_by={s}",
            "/v1/{s}",
            "/api/v1/{s}",
        ]
    )

    @FUZZ
    @given(template=paths, segment=SEGMENT, method=st.sampled_from(["get", "post", "patch", "delete"]), body=JSON)
    def run(template: str, segment: str, method: str, body: Any) -> None:
        path = template.replace("{s}", segment)
        headers = {"Authorization": f"Bearer {token}"}
        if method in ("post", "patch"):
            response = getattr(client, method)(
                path, data=json.dumps(body), content_type="application/json", headers=headers
            )
        else:
            response = getattr(client, method)(path, headers=headers)
        assert_answered(response)

    run()


def test_management_bodies(client: Client, catalog: Catalog, token: str) -> None:
    key_fields = ["name", "scopes", "expires_at", "allowed_models", "allowed_ips", "rpm_limit", "tpm_limit",
                  "max_concurrent", "monthly_budget_usd", "grace_period_seconds"]  # fmt: skip

    @FUZZ
    @given(
        body=st.fixed_dictionaries({}, optional={name: JSON for name in key_fields}),
        target=st.sampled_from(["post /v1/keys", "patch /v1/tenant", "patch key"]),
    )
    def run(body: Any, target: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if target == "patch key":
            key = services.api_key_create(tenant=Tenant.objects.get(slug="acme"), name="target")
            method, path = "patch", f"/v1/keys/{key.api_key.key_id}"
        else:
            method, path = target.split()
        response = getattr(client, method)(
            path, data=json.dumps(body), content_type="application/json", headers=headers
        )
        assert_answered(response)

    run()
