"""Redis Sentinel failover under load (issue 23, item 3): two replicas of the platform on a
Sentinel set (a master, a replica, three sentinels, tests/redisha.py), load from two
clients on a tenant with a budget and one without, then the master is SIGKILLed.

While the sentinels promote the replica (a few seconds), each worker backs off Redis and
takes its fallbacks (budgets through Postgres); once the new master answers, the probe
after a back-off reaches it, with no restart. Every call the upstream got is one ledger
row, and no client got a 5xx or a broken answer.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import redisha
from tests.faults.harness import FaultStack, Lane

pytestmark = [pytest.mark.faults, pytest.mark.skipif(redisha.available() is not None, reason=str(redisha.available()))]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[redisha.SentinelSet]:
    group = redisha.SentinelSet(tmp_path)
    try:
        yield group
    finally:
        group.close()


def test_the_platform_goes_on_after_a_sentinel_failover(
    fault_stack: Callable[..., FaultStack], sentinels: redisha.SentinelSet
) -> None:
    stack = fault_stack(env=sentinels.env())
    body = {"model": stack.seed["model"], "messages": [{"role": "user", "content": "fail over"}], "max_tokens": 20}
    for key in (stack.seed["open_key"], stack.seed["capped_key"]):
        for base in stack.bases:
            warm = httpx.post(
                f"{base}/v1/chat/completions",
                json={**body, "user": f"warm-{base}-{key[-6:]}"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            assert warm.status_code == 200, warm.text
    # The platform writes to the master the sentinels name
    assert int(redisha.ask(sentinels.master.port, "DBSIZE")) > 0
    run = stack.load(
        [
            Lane("open", stack.seed["open_key"], threads=2, body=body, stream_every=3),
            Lane("capped", stack.seed["capped_key"], threads=2, body=body, stream_every=3),
        ]
    )
    try:
        time.sleep(4)
        # When the master dies under load
        killed_at = time.time()
        sentinels.kill_master()
        sentinels.wait_for_failover()
        promoted_at = time.time()
        time.sleep(6)
    finally:
        results = run.stop()

    kinds = Counter(r.kind for r in results)
    broken = [r for r in results if r.kind == "broken"]
    assert not broken, (kinds, [r.detail for r in broken][:5], stack.logs(), sentinels.logs())
    server_errors = [r for r in results if r.status >= 500 or r.kind == "stream_error"]
    assert not server_errors, ([(r.status, r.code, r.tag) for r in server_errors][:10], stack.logs())
    # Both tenants were served throughout: during the failover and after it
    for lane in ("open", "capped"):
        during = [r for r in results if r.lane == lane and killed_at <= r.start <= promoted_at and r.kind == "ok"]
        after = [r for r in results if r.lane == lane and r.start >= promoted_at + 2]
        assert during, f"{lane}: nothing served while the sentinels failed over"
        assert after and all(r.kind == "ok" for r in after), (lane, Counter(r.kind for r in after))
    # Every call the upstream got is exactly one ledger row, none twice
    rows, upstream = stack.settled(timeout=60)
    assert upstream["total"] == rows, (upstream["total"], rows, stack.logs())
    assert max(upstream["by_user"].values()) == 1, "no call reached the upstream twice"
    # And the platform is back on Redis, at the promoted replica: admission counts there again
    before = redisha.ask(sentinels.replica.port, "DBSIZE")
    headers = {"Authorization": f"Bearer {stack.seed['limited_key']}"}
    minute = int(time.time() // 60)
    statuses = [
        httpx.post(f"{stack.bases[0]}/v1/chat/completions", json={**body, "user": f"limited-{i}"}, headers=headers)
        for i in range(4)
    ]
    if int(time.time() // 60) == minute:  # the key's 3 requests a minute, all in one window
        assert [r.status_code for r in statuses] == [200, 200, 200, 429], [r.text[:200] for r in statuses]
    assert int(redisha.ask(sentinels.replica.port, "DBSIZE")) >= int(before)
    print(
        f"sentinel failover: {len(results)} calls ({dict(kinds)}), upstream {upstream['total']} = ledger {rows}; "
        f"promoted {promoted_at - killed_at:.1f}s after the kill"
    )
