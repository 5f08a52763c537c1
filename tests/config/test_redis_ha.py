"""Redis Sentinel and Redis Cluster (issue 23, item 3), against real processes started by
the tests (tests/redisha.py): the one client of config/redis.py follows a Sentinel
failover, and on a three-node cluster every Redis user works, each script's keys in one
hash slot."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import LazySettings
from django.core.cache import cache
from redis.cluster import key_slot
from redis.exceptions import RedisError

from billing import admission as billing_admission
from billing.models import UsageRecord
from config import redis as shared_redis
from config.cache import TieredCache
from proxy import circuit, respcache
from tenants import activity
from tenants.models import ApiKey
from tests import redisha
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.skipif(redisha.available() is not None, reason=str(redisha.available()))


def use(settings: LazySettings, **redis_settings: Any) -> None:
    """Point this process's Redis client at another topology."""
    for name, value in redis_settings.items():
        setattr(settings, name, value)
    settings.TOLLWAY = {**settings.TOLLWAY, "REDIS_BACKOFF_SECONDS": 0.2}
    shared_redis.forget_client()
    shared_redis.reset()
    # Scripts registered through an earlier test's client would still call that client.
    for cached in (getattr(billing_admission, "_scripts", None),):
        if isinstance(cached, dict):
            cached.clear()


@pytest.fixture
def sentinels(settings: LazySettings, tmp_path: Path) -> Iterator[redisha.SentinelSet]:
    group = redisha.SentinelSet(tmp_path)
    use(
        settings,
        REDIS_SENTINELS=[("127.0.0.1", s.port) for s in group.sentinels],
        REDIS_SENTINEL_MASTER=redisha.MASTER_NAME,
        REDIS_URL=f"redis://{redisha.MASTER_NAME}/0",
        REDIS_CLUSTER=False,
    )
    try:
        yield group
    finally:
        group.close()
        shared_redis.forget_client()
        shared_redis.reset()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisha.Cluster]:
    nodes = redisha.Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def on_cluster(settings: LazySettings, cluster: redisha.Cluster) -> Iterator[redisha.Cluster]:
    use(settings, REDIS_SENTINELS=[], REDIS_CLUSTER=True, REDIS_URL=cluster.url)
    shared_redis.client().flushall()
    try:
        yield cluster
    finally:
        shared_redis.forget_client()
        shared_redis.reset()


def _set_works() -> bool:
    try:
        return bool(shared_redis.client().set("after-failover", "1"))
    except RedisError:
        return False


def test_sentinel_the_client_writes_to_the_master_and_follows_a_failover(sentinels: redisha.SentinelSet) -> None:
    assert shared_redis.topology() == "sentinel"
    # Given the cache and a counter written through the sentinels' master
    cache.set("before", "kept", 600)
    shared_redis.client().incrby("counter", 5)
    assert redisha.ask(sentinels.master.port, "GET", "counter") == "5"
    redisha.wait_until(lambda: redisha.ask(sentinels.replica.port, "GET", "counter") == "5", 10, "replication")
    # When the master dies
    sentinels.kill_master()
    with pytest.raises(RedisError):
        shared_redis.client().get("counter")
    assert not shared_redis.available()  # every user takes its fallback meanwhile
    sentinels.wait_for_failover()
    # Then the client reaches the promoted replica, with what was replicated, and no restart
    redisha.wait_until(_set_works, 30, "the client to reach the new master", every=0.1)
    assert shared_redis.available()
    assert redisha.ask(sentinels.replica.port, "GET", "after-failover") == "1"
    assert shared_redis.client().get("counter") == b"5"
    assert cache.get("before") == "kept"


def test_every_script_keeps_its_keys_in_one_hash_slot() -> None:
    for pk in (1, 7, 123456):
        assert key_slot(circuit._key(pk).encode()) == key_slot(circuit._probe_key(pk).encode())
    assert key_slot(circuit._key(1).encode()) != key_slot(circuit._key(2).encode()), "spread over the nodes"


def test_cluster_django_cache_and_the_shared_tier(on_cluster: redisha.Cluster) -> None:
    assert shared_redis.topology() == "cluster"
    values = {f"k{i}": f"v{i}" for i in range(30)}
    tier: TieredCache[str] = TieredCache("tw:ha", values.get)
    assert [tier.get(k) for k in values] == list(values.values())
    assert sum(1 for n in on_cluster.keys_per_node() if n) == 3, "the keys spread over all three nodes"
    # An invalidation deletes keys of many slots at once (split per slot by the client)
    values.update({k: "new" for k in values})
    tier.invalidate(list(values))
    assert [TieredCache("tw:ha", values.get).get(k) for k in values] == ["new"] * 30
    cache.set("ready", "1", 5)
    assert cache.get("ready") == "1"
    assert cache.add("ready", "2", 5) is False


def test_cluster_circuit_breaker_scripts(on_cluster: redisha.Cluster, settings: LazySettings) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "CIRCUIT_FAILURES": 2, "CIRCUIT_READ_CACHE_SECONDS": 0}
    circuit.forget_local()
    for pk in (11, 12, 13):  # in different slots, each with its probe key beside it
        assert circuit.record_failure(pk, status=503, latency_ms=3) == "closed"
        assert circuit.record_failure(pk, status=503, latency_ms=3) == "opened"
        assert circuit.acquire_probe(pk) is True
        assert circuit.acquire_probe(pk) is False
    states = circuit.states([11, 12, 13, 14])
    assert [states[pk].open_until > 0 for pk in (11, 12, 13, 14)] == [True, True, True, False]
    assert shared_redis.available(), "no script was refused (CROSSSLOT)"


@pytest.mark.django_db
def test_cluster_key_activity_and_response_cache(on_cluster: redisha.Cluster, key: Any) -> None:
    activity.forget_local()
    activity.key_used(key.api_key.pk)
    assert activity.flush() == 1  # a transaction on one key's slot
    assert ApiKey.objects.get(pk=key.api_key.pk).last_used_at is not None
    cache.set("tw:rc:1:abc", {"body": {}, "usage": {}}, 60)
    assert respcache.lookup("tw:rc:1:abc") == {"body": {}, "usage": {}}


@pytest.mark.django_db
def test_cluster_admission_holds_rate_limits_and_budgets(
    on_cluster: redisha.Cluster, api: Api, key: Any, catalog: Catalog
) -> None:
    # Given a key limited to 3 requests a minute and a tenant with a budget, on the cluster
    key.api_key.rpm_limit = 3
    key.api_key.save()
    tenant = key.api_key.tenant
    tenant.monthly_budget_usd = Decimal("5")
    tenant.save()
    body = {"model": "gpt-4.1", "messages": user("hi"), "max_tokens": 5}
    # Then the admission script runs there: three calls pass, the fourth is refused
    statuses = [api.chat(body).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert UsageRecord.objects.count() == 3
    assert shared_redis.available(), "admission never fell back (a CROSSSLOT script is not an outage)"
