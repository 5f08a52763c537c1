"""Killing a replica: GETs go on via the other one, and an in-flight POST is never re-sent
(a re-sent completion would be billed twice). Then, with no replica left, nginx's own 502
is OpenAI-shaped JSON. This module kills replicas, so it has a stack of its own."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from billing.models import UsageRecord
from tests.conftest import Catalog
from tests.deploy.conftest import Stack, assert_openai_error, serve_model

pytestmark = pytest.mark.live

IN_FLIGHT = 4


def established_to(port: int) -> int:
    """Open TCP connections accepted by the server on ``port`` (loopback, IPv4)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _remote, state = line.split()[1:4]
        if int(local.split(":")[1], 16) == port and state == "01":
            count += 1
    return count


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_killing_a_replica_keeps_gets_working_and_never_resends_a_post(
    stack: Stack, transactional_db: None, catalog: Catalog, key: Any, mock_server: Any
) -> None:
    # given a model whose upstream takes 4 s to answer, and both replicas warm
    slow = mock_server("--latency-ms", "4000")
    serve_model(catalog, "slow", slow)
    headers = {"Authorization": f"Bearer {key.plaintext}"}
    client = stack.client(headers=headers)
    assert [client.get("/v1/models").status_code for _ in range(4)] == [200] * 4

    # and completions in flight on both replicas (least_conn spreads them)
    results: list[httpx.Response] = []

    def complete() -> None:
        with stack.client(headers=headers) as own:
            results.append(
                own.post(
                    "/v1/chat/completions", json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
                )
            )

    threads = [threading.Thread(target=complete) for _ in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    wait_until(lambda: established_to(slow.port) >= IN_FLIGHT, 15, "the calls to reach the upstream")

    # when one replica dies mid-request, master and workers at once
    stack.kill("web-1")
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == IN_FLIGHT

    # then the calls it held fail with a 502 and were never sent to the other replica,
    dead, alive = (f"127.0.0.1:{port}" for port in stack.web_ports)
    failed = [r for r in results if r.status_code == 502]
    answered = [r for r in results if r.status_code == 200]
    assert len(failed) + len(answered) == IN_FLIGHT, [r.status_code for r in results]
    assert failed, "every call succeeded: nginx re-sent the POSTs the dead replica held"
    assert answered, "least_conn spreads the calls over both replicas"
    for response in failed:
        assert_openai_error(response, 502, "bad_gateway")
        logged = stack.logged(response.headers["x-request-id"])
        assert logged["upstream_addr"] == dead, "a POST sent to one replica must never go to another"
    # and the calls the other replica held completed, billed once each
    for response in answered:
        assert stack.logged(response.headers["x-request-id"])["upstream_addr"] == alive
    # (a JSON answer is metered just after it is sent, so give the rows a moment)
    wait_until(lambda: UsageRecord.objects.count() >= len(answered), 5, "the answered calls' ledger rows")
    assert UsageRecord.objects.count() == len(answered)
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {
        r.headers["x-request-id"] for r in answered
    }

    # GETs and new completions keep working through the surviving replica
    assert [client.get("/v1/models").status_code for _ in range(20)] == [200] * 20
    sdk = stack.sdk(key.plaintext)
    assert sdk.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "still there?"}])

    # when the last replica dies too, nginx answers 502 itself, in OpenAI's shape
    stack.kill("web-2")
    gone = client.get("/v1/models")
    error = assert_openai_error(gone, 502, "bad_gateway")
    assert gone.headers["x-request-id"] in error["message"]
    with pytest.raises(openai.InternalServerError):
        sdk.models.list()
