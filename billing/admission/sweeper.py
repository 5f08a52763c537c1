"""Reservations whose worker died: billed by the sweeper after their deadline, or at once
by the dead-worker reaper (gunicorn's ``child_exit``, ``manage.py reapworker``).

Either way a call is billed from the best usage known: its own ledger row when its worker
wrote it (or spooled it: the reaper replays the dead worker's spool first), else the
reservation's estimate (the prompt estimate and ``max_tokens``), marked as estimated.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

from django.conf import settings

from billing.admission import connection, counters, flow, keys, units
from billing.admission.units import month_bounds

log = logging.getLogger("billing.admission")


class WorkerAlive(RuntimeError):
    """The reaper was asked to bill the calls of a worker that still runs."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bill_redis(client: object, tenant_id: int, request_id: str, *, worker: str | None = None) -> int:
    """Bill one Redis reservation (if it is ``worker``'s, when given) and release it."""
    from billing.ledger import usage_record_from_reservation

    record_json, owner = client.hmget(keys.reservation(tenant_id, request_id), "record", "worker")  # type: ignore[attr-defined]  # a redis client
    if record_json is None:
        client.zrem(keys.deadlines(tenant_id), request_id)  # type: ignore[attr-defined]
        return 0
    if worker is not None and (owner is None or _text(owner) != worker):
        return 0
    record = json.loads(record_json)
    cost, inserted = usage_record_from_reservation(request_id=request_id, record=record)
    month, _, _ = month_bounds(record["timezone"], datetime.fromisoformat(record["created_at"]).timestamp())
    flow.settle_any(
        request_id,
        record["tenant_id"],
        record["api_key_id"],
        month,
        "redis",
        cost=cost,
        tokens=record["input_tokens"] + record["output_tokens"],
        counted=inserted,
    )
    if not inserted:
        # Its row was written, but its settle never reached Redis (the worker died between
        # the two, or Redis failed): the counters missed that cost.
        counters.mark_stale(record["tenant_id"])
    return int(inserted)


def _bill_redis_logged(client: object, tenant_id: int, request_id: str, *, worker: str | None = None) -> int:
    """``_bill_redis``; a reservation that cannot be billed is logged and left for the next
    round, so one bad record cannot stop the others."""
    try:
        return _bill_redis(client, tenant_id, request_id, worker=worker)
    except connection.RedisError:
        raise
    except Exception:
        log.exception("admission: could not bill reservation %s of tenant %s", request_id, tenant_id)
        return 0


def _tenants(client: object) -> list[int]:
    return sorted(int(t) for t in client.smembers(keys.TENANTS_WITH_RESERVATIONS))  # type: ignore[attr-defined]


def sweep(now: float | None = None, batch: int = 500) -> int:
    """Bill every reservation whose deadline has passed, from its own estimate, and
    release it; then invalidate the counters of every tenant marked stale. Returns how
    many calls were billed."""
    from billing.ledger import usage_record_from_reservation
    from billing.models import Reservation

    at = units.now() if now is None else now
    billed = 0
    if settings.REDIS_URL:
        client = connection.client()
        for tenant_id in _tenants(client):
            for raw in client.zrangebyscore(keys.deadlines(tenant_id), "-inf", at, start=0, num=batch):
                billed += _bill_redis_logged(client, tenant_id, _text(raw))
        counters.reconcile()
    for reservation in Reservation.objects.filter(deadline__lte=datetime.fromtimestamp(at, UTC))[:batch]:
        _, inserted = usage_record_from_reservation(request_id=reservation.request_id, record=reservation.record)
        reservation.delete()
        counters.mark_stale(reservation.tenant_id)
        billed += int(inserted)
    return billed


def _alive(worker_id: str) -> bool:
    """Whether ``worker_id`` (``<host>-<pid>``) names a process running on this host.
    Another host's worker cannot be checked from here: its reaper is trusted."""
    from billing.spool import worker_id as id_of

    pid = worker_id.rpartition("-")[2]
    if not pid.isdigit() or id_of(int(pid)) != worker_id:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_worker(worker_id: str) -> tuple[int, int]:
    """Bill at once every call of the dead worker ``worker_id``: first the rows it spooled
    (exact), then its reservations still held, from their estimate. Returns (rows
    replayed from its spool, calls billed from reservations). Raises WorkerAlive if that
    worker runs on this host."""
    from billing import spool
    from billing.ledger import usage_record_from_reservation
    from billing.models import Reservation

    if _alive(worker_id):
        raise WorkerAlive(f"worker {worker_id} is still running")
    replayed = spool.replay_worker(worker_id)
    billed = 0
    if settings.REDIS_URL:
        client = connection.client()
        for tenant_id in _tenants(client):
            for raw in client.zrange(keys.deadlines(tenant_id), 0, -1):
                billed += _bill_redis_logged(client, tenant_id, _text(raw), worker=worker_id)
    for reservation in Reservation.objects.filter(worker=worker_id):
        _, inserted = usage_record_from_reservation(request_id=reservation.request_id, record=reservation.record)
        reservation.delete()
        counters.mark_stale(reservation.tenant_id)
        billed += int(inserted)
    if replayed or billed:
        log.warning(
            "admission: reaped worker %s: %s spooled rows replayed, %s calls billed", worker_id, replayed, billed
        )
    return replayed, billed
