"""The harness itself, with no fault: every call the upstream got has exactly one ledger
row, and every client got a complete answer. The other fault tests build on this."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.faults.harness import FaultStack, Lane

pytestmark = pytest.mark.faults


def test_two_replicas_and_two_clients_bill_every_upstream_call_once(fault_stack: Callable[..., FaultStack]) -> None:
    stack = fault_stack()
    body = {"model": stack.seed["model"], "messages": [{"role": "user", "content": "count me"}], "max_tokens": 20}
    run = stack.load(
        [
            Lane("open", stack.seed["open_key"], threads=2, body=body, stream_every=3),
            Lane("capped", stack.seed["capped_key"], threads=1, body=body, stream_every=2),
        ]
    )
    time.sleep(4)
    results = run.stop()

    kinds = Counter(r.kind for r in results)
    assert kinds == {"ok": len(results)}, (kinds, [r.detail for r in results if r.kind != "ok"][:5])
    assert {r.client for r in results} == {"c1", "c2"}
    rows, upstream = stack.settled()
    assert upstream["total"] == len(results) == rows
    assert max(upstream["by_user"].values()) == 1, "no call reached the upstream twice"
    assert {r.request_id for r in results} <= stack.ledger_request_ids()
