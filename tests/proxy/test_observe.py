"""Prometheus metrics and the per-request log line."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from django.test import Client

from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_calls_tokens_cost_and_refusals(api: Api, client: Client, catalog: Catalog) -> None:
    before = client.get("/metrics").content.decode()
    response = api.chat({"model": "gpt-4.1", "messages": user("count me")})
    api.chat({"model": "gpt-9", "messages": user("unknown")})
    after = client.get("/metrics")
    assert after.status_code == 200 and after["Content-Type"].startswith("text/plain")
    text = after.content.decode()
    labels = {"model": "gpt-4.1", "provider": "mock", "status": "200", "tenant": "acme"}
    assert sample(text, "tollway_requests_total", **labels) - sample(before, "tollway_requests_total", **labels) == 1
    usage = response.json()["usage"]
    grew = sample(text, "tollway_tokens_total", model="gpt-4.1", kind="output") - sample(
        before, "tollway_tokens_total", model="gpt-4.1", kind="output"
    )
    assert grew == usage["completion_tokens"]
    assert sample(text, "tollway_rejections_total", code="model_not_found") >= 1
    assert "tollway_gateway_overhead_seconds_bucket" in text
    assert "tollway_time_to_first_byte_seconds_bucket" in text
    assert sample(text, "tollway_cache_lookups_total", cache="tw:key") >= 1


def test_metrics_are_internal_only(client: Client) -> None:
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 404
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


def test_one_log_line_per_request_without_secrets(
    api: Api, catalog: Catalog, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tollway.request")
    response = api.chat({"model": "gpt-4.1", "messages": user("a private prompt")})
    lines = [r for r in caplog.records if r.name == "tollway.request"]
    assert len(lines) == 1
    line = lines[0].__dict__
    assert line["request_id"] == response["X-Request-ID"]
    assert (line["tenant"], line["model"], line["provider"], line["status"]) == ("acme", "gpt-4.1", "mock", 200)
    assert line["key"] == f"tlw_{key.api_key.key_id}"
    assert line["cost_usd"] == response.json()["usage"]["cost"]
    assert line["output_tokens"] == response.json()["usage"]["completion_tokens"]
    assert line["overhead_ms"] >= 0 and line["upstream_ms"] >= 0
    text = caplog.text + repr(line)
    assert "a private prompt" not in text
    assert not re.search(key.plaintext.split("_", 2)[2][:16], text)
