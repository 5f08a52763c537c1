"""The official openai SDK (its own retries off) against gunicorn: a deployment that fails
before the first byte is failed over unnoticed, and a stream cut after it is never re-sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from billing.models import Model, Price, UsageRecord
from proxy.models import Deployment, Provider
from tenants import services
from tests.conftest import UPSTREAM_KEY_ENV, Catalog, Upstream, free_port, stop
from tests.e2e.conftest import serve

pytestmark = pytest.mark.live


@pytest.fixture
def live(production_env: dict[str, str], catalog: Catalog, mock_upstream: Upstream) -> Iterator[str]:
    def provider(name: str, base_url: str) -> Provider:
        return Provider.objects.create(
            name=name, kind=Provider.Kind.OPENAI, base_url=base_url, api_key_env=UPSTREAM_KEY_ENV, connect_timeout=1
        )

    dead = provider("dead", f"http://127.0.0.1:{free_port()}/v1")
    busy, good = provider("busy", mock_upstream.base_url), provider("good", mock_upstream.base_url)
    for name, first in (
        ("resilient", (dead, "x")),
        ("overloaded", (busy, "mock-error-529")),
        ("cut", (busy, "mock-cut")),
    ):
        model = Model.objects.create(name=name)
        Price.objects.create(model=model, input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))
        Deployment.objects.create(model=model, provider=first[0], upstream_model=first[1], priority=0)
        Deployment.objects.create(model=model, provider=good, upstream_model="healthy", priority=1)
    mock_upstream.forget()
    proc, base = serve({**production_env, "TOLLWAY_RETRY_BACKOFF_BASE_SECONDS": "0.01"})
    try:
        yield base
    finally:
        stop(proc)


def rows_when(count: int) -> list[UsageRecord]:
    """The ledger once it holds ``count`` rows: a JSON answer is metered just after it is sent."""
    deadline = time.monotonic() + 5
    while UsageRecord.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = list(UsageRecord.objects.order_by("created_at"))
    assert len(rows) == count
    return rows


def test_sdk_never_notices_a_failover_nor_gets_a_re_sent_stream_and_each_request_is_billed_once(
    live: str, key: services.CreatedKey, sdk: Any, mock_upstream: Upstream
) -> None:
    client = sdk(live, key.plaintext)  # max_retries=0: any retry is Tollway's
    hi: Any = [{"role": "user", "content": "hi"}]
    raw = client.chat.completions.with_raw_response.create(model="resilient", messages=hi)
    assert raw.parse().choices[0].message.content
    assert (raw.headers["x-tollway-provider"], raw.headers["x-tollway-attempts"]) == ("good", "2")
    chunks = list(client.chat.completions.create(model="overloaded", messages=hi, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Mock answer:")
    rows = list(rows_when(2))
    assert [(r.provider, r.attempts) for r in rows] == [("good", 2), ("good", 2)]
    # the dead deployment refused the connection; the 529 was seen once, then the backup
    assert [r["body"]["model"] for r in mock_upstream.received()] == ["healthy", "mock-error-529", "healthy"]

    # a stream cut after its first chunks: an error for the SDK, never a second upstream call
    mock_upstream.forget()
    stream = client.chat.completions.create(model="cut", messages=hi, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert [r["body"]["model"] for r in mock_upstream.received()] == ["mock-cut"]
    row = rows_when(3)[-1]
    assert (row.outcome, row.attempts, row.provider) == ("upstream_error", 1, "busy")
