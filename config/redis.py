"""One Redis client per process, and one Redis health state that every Redis user shares.

Every Redis user (the key, route and account caches, admission, the circuit breaker, the
response cache, key activity, spend-alert marks, ``/ready``) reaches Redis through
:func:`client`; Django's cache gets the same client through :class:`CacheClient`.
So one rule holds for all of them:

* **Short timeouts.** A command waits at most ``REDIS_SOCKET_TIMEOUT`` (250 ms) for its
  answer and ``REDIS_CONNECT_TIMEOUT`` (250 ms) to connect; a hung Redis costs a request
  one such wait, never seconds. Not shorter: on a box saturated by 2,000 streams a
  healthy Redis answered after 50 to 61 ms, and each false outage sent a second of calls
  to the Postgres fallbacks (``docs/operators/configuration.md``). A refused or reset
  connection is retried once at once; a timeout is not retried.
* **A shared back-off.** After a connection error or a timeout, this worker stops asking
  Redis for ``REDIS_BACKOFF_SECONDS`` (1 s): every command fails at once with
  :class:`RedisUnavailable`, and each user takes its fallback (a cache miss read from
  Postgres, budgets held by Postgres row locks, circuits read closed...). Then one
  command, the probe, tries Redis; the others keep failing fast until it answers. Its
  success ends the outage; its failure backs off again.
* **Only outages count.** :data:`OUTAGE_ERRORS` (connection and timeout errors) start a
  back-off. A command Redis refuses (a script error, a wrong type) proves Redis answers:
  it is the caller's error to handle and never switches Redis off for anyone else.

Users ask :func:`available` before work they can skip (a cache read) and catch
``RedisError`` (which :class:`RedisUnavailable` is) around the rest. A command that fails
through the client reports itself; code that sees an outage some other way calls
:func:`failed`.

The health state is per worker process: each worker finds out on its own, within one
timeout, and nothing is shared that could itself hang.

Three topologies, chosen by the settings (``docs/deploying/redis.md``):

* one server, ``REDIS_URL``;
* **Sentinel** (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``): redis-py's Sentinel
  client asks the sentinels for the master on every new connection, so after a failover
  the first probe after the back-off reaches the new master;
* **Cluster** (``REDIS_CLUSTER=1``, ``REDIS_URL`` naming any node): redis-py's cluster
  client routes each command by its keys' hash slot. Every script keeps its keys in one
  slot with a hash tag (``{t<tenant>}`` for admission, ``{<deployment>}`` for circuits).
  The health state is one for the whole cluster: a hung node backs off all of Redis.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from django.conf import settings
from django_redis.client import DefaultClient
from prometheus_client import Counter
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import Sentinel

log = logging.getLogger(__name__)

# The errors that mean Redis is down or hung. Anything else Redis answered is not an outage.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

BACKOFFS = Counter("tollway_redis_backoffs_total", "Times a worker stopped asking Redis after an outage error")
SKIPPED = Counter("tollway_redis_skipped_total", "Redis commands answered by a fallback while backing off")


class RedisUnavailable(RedisConnectionError):
    """Redis failed recently; this worker is not asking it until the back-off ends."""


# --- the health state --------------------------------------------------------------------


class _Health:
    """When this worker may ask Redis again.

    ``down_until`` is 0 while Redis is healthy (the fast path reads one attribute);
    otherwise the monotonic time the back-off ends. ``probe_until`` is when the one
    probe sent after the back-off counts as lost, if it never reported back.
    """

    def __init__(self) -> None:
        self.down_until = 0.0
        self.probe_until = 0.0
        self.lock = threading.Lock()


_health = _Health()


def _conf(name: str) -> float:
    return float(settings.TOLLWAY[name])


def enabled() -> bool:
    """Whether Redis is configured at all (the embedded default has none)."""
    return bool(settings.REDIS_URL)


def available() -> bool:
    """Whether to ask Redis now: configured, and not backing off after an outage.

    True also once the back-off is over and no probe is out, so some request probes.
    """
    if not enabled():
        return False
    down_until = _health.down_until
    if down_until == 0.0:
        return True
    now = time.monotonic()
    return now >= down_until and now >= _health.probe_until


def cache_ready() -> bool:
    """Whether Django's cache may be asked now: always in the embedded default (process
    memory), and with Redis while this worker is not backing off."""
    return not enabled() or available()


def failed(exc: BaseException) -> None:
    """Note an outage error: stop asking Redis for ``REDIS_BACKOFF_SECONDS``.

    Errors that are not outages (:data:`OUTAGE_ERRORS`) are ignored here, as is
    :class:`RedisUnavailable` itself (it is the back-off speaking)."""
    if not isinstance(exc, OUTAGE_ERRORS) or isinstance(exc, RedisUnavailable):
        return
    backoff = _conf("REDIS_BACKOFF_SECONDS")
    with _health.lock:
        first = _health.down_until == 0.0
        _health.down_until = time.monotonic() + backoff
        _health.probe_until = 0.0
    BACKOFFS.inc()
    if first:
        log.error("redis: unreachable (%r); using fallbacks, probing every %ss", exc, backoff)


def _before() -> None:
    """Raise :class:`RedisUnavailable` while backing off; let exactly one probe through after."""
    if _health.down_until == 0.0:
        return
    now = time.monotonic()
    with _health.lock:
        if _health.down_until == 0.0:
            return
        if now < _health.down_until or now < _health.probe_until:
            SKIPPED.inc()
            raise RedisUnavailable("Redis failed recently; not asking it until the back-off ends")
        # The probe may take one connect and two reads before it reports.
        _health.probe_until = now + 2 * (_conf("REDIS_CONNECT_TIMEOUT") + _conf("REDIS_SOCKET_TIMEOUT")) + 0.1


def _answered() -> None:
    """Redis answered (even with an error of its own): any outage is over."""
    if _health.down_until == 0.0:
        return
    with _health.lock:
        if _health.down_until == 0.0:
            return
        _health.down_until = 0.0
        _health.probe_until = 0.0
    log.warning("redis: answering again; fallbacks off")


def _guarded(call: Any, *args: Any, **kwargs: Any) -> Any:
    _before()
    try:
        result = call(*args, **kwargs)
    except OUTAGE_ERRORS as exc:
        failed(exc)
        raise
    except RedisError:
        _answered()
        raise
    _answered()
    return result


def reset() -> None:
    """Forget any outage (tests, and a worker that knows Redis is back)."""
    with _health.lock:
        _health.down_until = 0.0
        _health.probe_until = 0.0


# --- the client ----------------------------------------------------------------------------


class GuardedPool(redis.BlockingConnectionPool):
    """A full pool means this worker is busy, not that Redis is down.

    When a burst of requests saturates the worker, connections come back to the pool
    late because their greenlets wait for the CPU, not for Redis; counting that wait as an
    outage sent every request of a 2,000-stream burst to the Postgres fallbacks, which
    then ran out of connections themselves. So a greenlet waits up to
    ``REDIS_POOL_TIMEOUT`` (10 s) for a connection, and only a pool that stays full that
    long counts as an outage. A hung Redis still costs one socket timeout: its
    connections come back within ``REDIS_SOCKET_TIMEOUT``, and one handed out while this
    worker is backing off is put back unused (:class:`RedisUnavailable`)."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = super().get_connection(*args, **kwargs)
        if _waited_into_outage():
            self.release(connection)
            raise RedisUnavailable("Redis failed while this command waited for a connection")
        return connection


def _waited_into_outage() -> bool:
    """Whether a command that has just got its connection (after waiting for a free one)
    must not be sent: this worker started backing off meanwhile. Counted as skipped."""
    down_until = _health.down_until
    if down_until and time.monotonic() < down_until:
        SKIPPED.inc()
        return True
    return False


class GuardedPipeline(Pipeline):
    """A pipeline whose ``execute`` follows the shared health state."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return list(_guarded(super().execute, raise_on_error))


class GuardedRedis(redis.Redis):
    """``redis.Redis`` whose every command (and pipeline) follows the shared health state."""

    lane: ScriptLane | None = None  # one server's hot scripts (set by _build)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return _guarded(super().execute_command, *args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> GuardedPipeline:
        return GuardedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class GuardedClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose ``execute`` follows the shared health state."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return list(_guarded(super().execute, raise_on_error))


class GuardedRedisCluster(RedisCluster):
    """``redis.cluster.RedisCluster`` whose every command and pipeline follows the shared
    health state."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return _guarded(super().execute_command, *args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> GuardedClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = GuardedClusterPipeline  # the same object; only execute() is wrapped
        return pipe


class ScriptLane:
    """The hot scripts (admission's two per call) on connections of their own, without
    redis-py's per-command machinery.

    redis-py spends about 60 us of CPU per ``EVALSHA`` here, of which 37 are the socket
    itself: the rest is its command dispatch, retry wrapper, observability hooks and the
    pool's "has this connection unread data?" poll, which a connection that only ever
    carries this lane's request-reply pairs cannot have (any failure mid-reply, a gevent
    timeout included, disconnects it). The rules stay the client's: the shared health
    state (a script that waited for a connection into an outage is not sent), the same
    timeouts, a refused or reset connection retried once at once, and at most
    ``REDIS_MAX_CONNECTIONS`` connections, waited for up to ``REDIS_POOL_TIMEOUT``.
    Only for one server: Sentinel and Cluster clients run scripts through redis-py.
    """

    def __init__(self, pool: Any, size: int, wait: float) -> None:
        self._connection_class = pool.connection_class
        self._connection_kwargs = pool.connection_kwargs
        self._size = size
        self._wait = wait
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue(self._size)
        for _ in range(self._size):
            self._idle.put_nowait(None)  # a slot whose connection is made on first use

    def evalsha(self, sha: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """``EVALSHA`` (``EVAL`` if Redis lost its script cache), under the health state."""
        return _guarded(self._call, sha, source, keys, args)

    def _call(self, sha: str, source: str, keys: list[str], args: list[Any]) -> Any:
        if self._pid != os.getpid():  # a forked child: its parent's sockets are not its own
            self._reset()
        try:
            connection = self._idle.get(True, self._wait)
        except queue.Empty:
            raise RedisConnectionError("No connection available.") from None
        try:
            if _waited_into_outage():  # as GuardedPool: a hung Redis costs one timeout, not one per waiter
                raise RedisUnavailable("Redis failed while this script waited for a connection")
            if connection is None:
                connection = self._connection_class(**self._connection_kwargs)
            try:
                return self._roundtrip(connection, "EVALSHA", sha, keys, args)
            except NoScriptError:
                return self._roundtrip(connection, "EVAL", source, keys, args)
        finally:
            self._idle.put_nowait(connection)

    @staticmethod
    def _roundtrip(connection: Any, command: str, script: str, keys: list[str], args: list[Any]) -> Any:
        packed = connection.pack_command(command, script, len(keys), *keys, *args)
        for retried in (False, True):
            try:
                if not connection.is_connected:
                    connection.connect()
                connection.send_packed_command(packed, check_health=False)
                return connection.read_response()
            except RedisTimeoutError:
                connection.disconnect()
                raise
            except RedisConnectionError:
                # Closed by the server while idle, or Redis restarted: once more, afresh.
                connection.disconnect()
                if retried:
                    raise
            except RedisError:
                raise  # Redis's own answer (a script error): the connection is fine
            except BaseException:
                connection.disconnect()  # cut mid-reply: its answer must not reach the next caller
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        while True:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                return
            if connection is not None:
                connection.disconnect()


def script_lane() -> ScriptLane | None:
    """The client's :class:`ScriptLane`, or None (Sentinel, Cluster: use redis-py)."""
    return getattr(client(), "lane", None)


_client: Any = None
_client_lock = threading.Lock()


@functools.cache
def _driver() -> DriverInfo:
    """What connections tell Redis they are (``CLIENT SETINFO``), made once: redis-py
    otherwise reads its version from the package metadata for every new connection, and
    py-spy found that at 2 % of a worker's CPU while a burst grew the pools."""
    return DriverInfo()


def connection_kwargs() -> dict[str, Any]:
    """What every connection to a Redis server is opened with: the short timeouts, and one
    immediate retry of a refused or reset connection (never of a timeout)."""
    return {
        "driver_info": _driver(),
        "socket_timeout": _conf("REDIS_SOCKET_TIMEOUT"),
        "socket_connect_timeout": _conf("REDIS_CONNECT_TIMEOUT"),
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        # redis-py would ask every new connection for maintenance notifications (a managed
        # Redis Enterprise feature): one more round trip per connection, for nothing here.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


def topology() -> str:
    """``"single"``, ``"sentinel"`` or ``"cluster"``, from the settings."""
    if getattr(settings, "REDIS_SENTINELS", None):
        return "sentinel"
    if getattr(settings, "REDIS_CLUSTER", False):
        return "cluster"
    return "single"


def _build() -> Any:
    kind = topology()
    if kind == "sentinel":
        return _build_sentinel()
    if kind == "cluster":
        return _build_cluster()
    # A bounded pool: a greenlet waits for a free connection rather than fail at once
    # when a thousand requests want Redis together (GuardedPool).
    pool = GuardedPool.from_url(
        settings.REDIS_URL,
        max_connections=int(settings.TOLLWAY["REDIS_MAX_CONNECTIONS"]),
        timeout=_conf("REDIS_POOL_TIMEOUT"),
        **connection_kwargs(),
    )
    built = GuardedRedis(connection_pool=pool)
    built.lane = ScriptLane(pool, int(settings.TOLLWAY["REDIS_MAX_CONNECTIONS"]), _conf("REDIS_POOL_TIMEOUT"))
    return built


def _build_sentinel() -> Any:
    """The master of ``REDIS_SENTINEL_MASTER``, found through ``REDIS_SENTINELS``.
    ``REDIS_URL`` gives the database number and the master's username and password."""
    url = urlsplit(settings.REDIS_URL)
    auth = {"username": unquote(url.username) if url.username else None}
    auth["password"] = unquote(url.password) if url.password else None
    conn = connection_kwargs()
    sentinel = Sentinel(
        settings.REDIS_SENTINELS,
        # The sentinels themselves: the same short timeouts, no retries of their own.
        sentinel_kwargs={
            "socket_timeout": conn["socket_timeout"],
            "socket_connect_timeout": conn["socket_connect_timeout"],
            "retry": Retry(NoBackoff(), 0),
            "password": settings.TOLLWAY["REDIS_SENTINEL_PASSWORD"] or None,
        },
        db=int(url.path.strip("/") or 0),
        **auth,
        **conn,
    )
    return sentinel.master_for(
        settings.REDIS_SENTINEL_MASTER,
        redis_class=GuardedRedis,
        max_connections=int(settings.TOLLWAY["REDIS_MAX_CONNECTIONS"]),
    )


def _build_cluster() -> Any:
    """A cluster client from ``REDIS_URL`` (any node; the others are discovered). It does
    not retry on its own: an outage error backs off, and the probe finds the new layout."""
    conn = connection_kwargs()
    del conn["retry"]  # per node: none (redis-py's default); the client's own is below
    return GuardedRedisCluster.from_url(
        settings.REDIS_URL,
        retry=Retry(NoBackoff(), 0),
        max_connections=int(settings.TOLLWAY["REDIS_MAX_CONNECTIONS"]),
        **conn,
    )


def client() -> Any:
    """This process's Redis client (made on first use; its pool reconnects after a fork).

    Every command through it follows the shared health state: while backing off it raises
    :class:`RedisUnavailable` (a ``redis.ConnectionError``) without touching the network."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                if not enabled():
                    raise RedisUnavailable("Redis is not configured (REDIS_URL is empty)")
                _client = _build()
    return _client


def forget_client() -> None:
    """Drop the client, so the next :func:`client` builds one from the settings (tests)."""
    global _client
    with _client_lock:
        old, _client = _client, None
    if old is not None:
        lane = getattr(old, "lane", None)
        if lane is not None:
            lane.close()
        old.close()
        pool = getattr(old, "connection_pool", None)  # a cluster client has one per node, closed above
        if pool is not None:
            pool.disconnect()


class CacheClient(DefaultClient):
    """django-redis's client, answering with :func:`client`: Django's cache (and
    ``django_redis.get_redis_connection``) share this process's client, its pool, its
    timeouts and its health state."""

    def get_client(self, write: bool = True, tried: Any = None) -> Any:
        return client()

    def get_client_with_index(self, write: bool = True, tried: Any = None) -> tuple[Any, int]:
        return client(), 0
