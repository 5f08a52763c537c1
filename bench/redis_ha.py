"""The cost per call of Redis Sentinel and Redis Cluster against one Redis server, as a
ratio in one run: ``make bench REDIS_HA=1`` (or ``python bench/redis_ha.py``).

It starts the three topologies side by side on loopback (tests/redisha.py: one server; a
master, a replica and three sentinels; three cluster nodes), points config/redis.py's
client at each in turn, and times the Redis work of one gateway call through it: a
shared-cache read (the key or route tier), the admission script and the settle script,
each on keys hash-tagged by tenant as admission's are. The topologies are timed in
alternating rounds, so a noisy neighbour on the machine weighs on all three alike.

This is the client and topology cost, not a full call: ``make bench`` P1 and P3 measure
the whole path on one Redis.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench-only")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # replaced per topology below

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.cache import cache  # noqa: E402

from config import redis as shared_redis  # noqa: E402
from tests import redisha  # noqa: E402

# Shaped like admission's: a rate window, a concurrency count and a reservation taken in
# one script; given back, and the spend counted, in the other.
ADMIT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + 1 > tonumber(ARGV[1]) then return {'rate'} end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], 120)
redis.call('INCR', KEYS[2]); redis.call('EXPIRE', KEYS[2], 3600)
redis.call('INCRBY', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], 'amount', ARGV[2], 'record', ARGV[3]); redis.call('EXPIRE', KEYS[4], 3600)
return {'ok'}
"""
SETTLE = """
redis.call('DECRBY', KEYS[3], ARGV[1]); redis.call('DECR', KEYS[2])
redis.call('INCRBY', KEYS[5], ARGV[2]); redis.call('DEL', KEYS[4])
return 1
"""


def one_call(i: int, scripts: dict[str, Any]) -> None:
    tenant = i % 50
    tag = f"tw:bench:{{t{tenant}}}"
    keys = [f"{tag}:rl:{i // 1000}", f"{tag}:cc", f"{tag}:resv", f"{tag}:req:{i}", f"{tag}:spent"]
    cache.get(f"tw:bench:key:{tenant}")
    scripts["admit"](keys=keys, args=[10**9, 1500, '{"model": "bench", "tokens": 1234}'])
    scripts["settle"](keys=keys, args=[1500, 1200])


def use(topology: str, env: dict[str, str]) -> dict[str, Any]:
    settings.REDIS_URL = env["REDIS_URL"]
    settings.REDIS_SENTINELS = [
        (host, int(port))
        for host, _, port in (s.rpartition(":") for s in env.get("REDIS_SENTINELS", "").split(",") if s)
    ]
    settings.REDIS_SENTINEL_MASTER = env.get("REDIS_SENTINEL_MASTER", "mymaster")
    settings.REDIS_CLUSTER = env.get("REDIS_CLUSTER") == "1"
    # The bench shares a loaded machine: a timeout here would measure the back-off, not Redis.
    settings.TOLLWAY = {**settings.TOLLWAY, "REDIS_SOCKET_TIMEOUT": 2.0, "REDIS_CONNECT_TIMEOUT": 2.0}
    shared_redis.forget_client()
    shared_redis.reset()
    client = shared_redis.client()
    assert shared_redis.topology() == topology, (shared_redis.topology(), topology)
    for tenant in range(50):
        cache.set(f"tw:bench:key:{tenant}", {"tenant": tenant, "scopes": ["inference"]}, 600)
    return {"admit": client.register_script(ADMIT), "settle": client.register_script(SETTLE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per topology per round (default 1,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    options = parser.parse_args()
    if (why := redisha.available()) is not None:
        sys.exit(why)

    base = Path(tempfile.mkdtemp(prefix="tollway-redis-ha-"))
    single = redisha.RedisProcess(base, "single", [])
    single.start()
    group = redisha.SentinelSet(base)
    cluster = redisha.Cluster(base)
    topologies = {
        "single": {"REDIS_URL": f"redis://127.0.0.1:{single.port}/0"},
        "sentinel": group.env(),
        "cluster": cluster.env(),
    }
    timings: dict[str, list[float]] = {name: [] for name in topologies}
    try:
        for round_ in range(options.rounds):
            for name, env in topologies.items():
                scripts = use(name, env)
                for i in range(50):  # warm: connections open, scripts loaded
                    one_call(i, scripts)
                start = time.perf_counter()
                for i in range(options.calls):
                    one_call(round_ * options.calls + i, scripts)
                timings[name].append((time.perf_counter() - start) / options.calls)
    finally:
        shared_redis.forget_client()
        cluster.close()
        group.close()
        single.kill()

    single_cost = statistics.median(timings["single"])
    print(f"Redis work of one call (a cache read, the admission and settle scripts), {options.rounds} rounds:")
    print(f"{'topology':<10} {'µs per call':>12} {'ratio':>7}")
    for name, values in timings.items():
        cost = statistics.median(values)
        print(f"{name:<10} {cost * 1e6:>12.0f} {cost / single_cost:>6.2f}x")


if __name__ == "__main__":
    main()
