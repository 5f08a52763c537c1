"""What happens to each OpenAI parameter on a translated provider (``proxy.translate.params``):
translated, ignored for a documented reason, or refused with a 400 naming it, unless the
provider drops what it cannot carry; and the docs name every one."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from billing.models import UsageRecord
from proxy.models import Provider
from proxy.translate.params import RULES
from tests.conftest import ROOT, Api, Catalog, Upstream, user

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["anthropic", "gemini"])
def translated(
    request: pytest.FixtureRequest, catalog: Catalog, anthropic_upstream: Upstream, gemini_upstream: Upstream
) -> tuple[str, Upstream]:
    upstream = anthropic_upstream if request.param == "anthropic" else gemini_upstream
    model = "claude-sonnet-4-20250514" if request.param == "anthropic" else "gemini-2.5-flash"
    catalog.add_http_model("t", upstream, model, kind=request.param)
    upstream.forget()
    return request.param, upstream


def sent(upstream: Upstream) -> Any:
    return upstream.last()["body"]


def test_refused_parameters_are_a_400_naming_them_before_any_call(api: Api, translated: tuple[str, Upstream]) -> None:
    kind, upstream = translated
    refused = ["logit_bias", "audio", "web_search_options", "functions", "verbosity"]
    if kind == "anthropic":
        refused += ["n", "logprobs", "presence_penalty", "frequency_penalty"]
    values = {
        "logit_bias": {"50256": -100},
        "audio": {"voice": "alloy", "format": "wav"},
        "web_search_options": {},
        "functions": [{"name": "f"}],
        "verbosity": "low",
        "n": 2,
        "logprobs": True,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
    }
    for name in refused:
        response = api.chat({"model": "t", "messages": user("x"), name: values[name]})
        assert response.status_code == 400, (name, response.content)
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (name, "unsupported_by_provider")
        assert name in error["message"]
    response = api.chat({"model": "t", "messages": user("x"), "chat_template_kwargs": {"x": 1}})
    assert response.json()["error"]["param"] == "chat_template_kwargs", "an unknown parameter might matter"
    assert upstream.received() == [] and not UsageRecord.objects.exists()


def test_values_that_ask_for_nothing_and_ignored_parameters_pass(api: Api, translated: tuple[str, Upstream]) -> None:
    _kind, upstream = translated
    body = {
        "model": "t",
        "messages": user("x"),
        "n": 1,
        "logprobs": False,
        "presence_penalty": 0,
        "logit_bias": {},
        "modalities": ["text"],
        "verbosity": "medium",
        "store": True,
        "metadata": {"team": "a"},
        "service_tier": "flex",
        "prediction": {"type": "content", "content": "x"},
        "prompt_cache_key": "k",
    }
    response = api.chat(body)
    assert response.status_code == 200, response.content
    forwarded = str(sent(upstream))
    assert not any(name in forwarded for name in ("store", "team", "flex", "prompt_cache_key", "prediction"))


def test_the_providers_drop_setting_turns_refusals_into_drops(api: Api, translated: tuple[str, Upstream]) -> None:
    kind, upstream = translated
    Provider.objects.filter(kind=kind).update(drop_unsupported_params=True)
    body = {"model": "t", "messages": user("x"), "logit_bias": {"1": 2}, "chat_template_kwargs": {"a": 1}}
    response = api.chat(body)
    assert response.status_code == 200, response.content
    assert "logit_bias" not in str(sent(upstream)) and "chat_template_kwargs" not in str(sent(upstream))


def test_translated_parameters_reach_the_provider(api: Api, translated: tuple[str, Upstream]) -> None:
    kind, upstream = translated
    body = {"model": "t", "messages": user("x"), "seed": 7, "user": "u-1", "top_k": 5, "safety_identifier": "s"}
    assert api.chat(body).status_code == 200
    if kind == "anthropic":  # seed ignored (best effort even at OpenAI); user is the end-user id
        assert sent(upstream)["metadata"] == {"user_id": "u-1"} and sent(upstream)["top_k"] == 5
        assert "seed" not in sent(upstream)
    else:  # seed translated; Gemini has no end-user id
        assert sent(upstream)["generationConfig"] == {"seed": 7, "topK": 5}
        assert "u-1" not in str(sent(upstream))


def test_the_catalog_and_the_admin_set_the_drop_setting(tmp_path: Path, client: Client) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "providers:\n"
        "  - {name: claude, kind: anthropic, base_url: 'https://api.anthropic.com/v1', api_key_env: K,\n"
        "     drop_unsupported_params: true}\n"
    )
    call_command("importcatalog", str(path), stdout=StringIO())
    provider = Provider.objects.get()
    assert provider.drop_unsupported_params
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    page = client.get(reverse("admin:proxy_provider_change", args=[provider.pk])).content.decode()
    assert 'name="drop_unsupported_params"' in page and "checked" in page


def _docs() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(p.read_text() for p in pages if p.exists())


def test_the_docs_say_what_happens_to_every_parameter() -> None:
    # "nothing is dropped without the README saying so": each parameter has a table row
    docs = _docs()
    first_cells = [line.split("|")[1] for line in docs.splitlines() if line.startswith("| `")]
    rows = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}
    for kind, rules in RULES.items():
        for name, rule in rules.items():
            if name not in ("model", "messages"):  # the table's first rows say how messages map
                assert name in rows, f"the parameter table does not name `{name}` ({kind}: {rule.fate})"
    assert "drop_unsupported_params" in docs


MALFORMED: list[dict[str, Any]] = [
    {"tools": "get_weather"},
    {"tools": [{"type": "function"}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": "x"}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{"}}]}]},
    {"response_format": {"type": "json_schema", "json_schema": "nope"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}},
    {"reasoning_effort": ["high"]},
    {"reasoning_effort": "maximal"},
    {"stop": 7},
    {"stop": ["a", 1]},
]


@pytest.mark.parametrize("extra", MALFORMED)
def test_a_malformed_request_is_a_400_never_a_5xx(api: Api, translated: tuple[str, Upstream], extra: Any) -> None:
    _, upstream = translated
    response = api.chat({"model": "t", "messages": user("x"), **extra})
    assert response.status_code == 400, response.content
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert upstream.received() == []
