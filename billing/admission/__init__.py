"""Admission: rate limits and budget reservations, atomic across every process and replica.

One Redis Lua script checks and takes everything a request needs in one round trip:
requests and tokens per minute and concurrent requests (per key and per tenant), and a
reservation of the request's maximum cost against the tenant's monthly budget, the key's
monthly budget and, for a prepaid tenant, its credit balance. Settling turns the
reservation into the actual cost; a failure releases it; the sweeper and the dead-worker
reaper bill reservations whose worker died. Both are idempotent per request id.

Money in Redis is integer micro-dollars, rounded up, so a reservation never holds less
than the cost. Postgres stays the truth; the Redis counters carry a generation and are
rebuilt from Postgres whenever they may have missed something (``counters``).

One module per concern:

* ``reservation``: what the proxy hands over (``Ask``, ``ReservationRecord``) and gets back (``Admission``);
* ``flow``: which path a request takes, and what a Redis failure means;
* ``redis_path`` / ``postgres_path`` / ``local``: the three ways to admit;
* ``counters``: generations, stale marks, rebuilds;
* ``inflight``: this worker's calls in flight, re-registered after Redis loses its memory;
* ``sweeper``: expired reservations, dead workers;
* ``scripts`` and ``lua/``: the Lua scripts, with named KEYS and ARGV; ``keys``: their key names;
* ``connection``: the one way to Redis, and whether it is down;
* ``accounts``, ``answers``, ``units``: accounts, 429s and headers, micro-dollars and months.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from billing.admission.accounts import AccountSnapshot, account_of, accounts, credit_balance
from billing.admission.counters import forget_counters, invalidate
from billing.admission.flow import admit, release, reservation_forget, reserved_total, settle
from billing.admission.reservation import Admission, Ask, Limits, ReservationRecord
from billing.admission.sweeper import WorkerAlive, reap_worker, sweep
from billing.admission.units import MICRO, from_micro, month_bounds, to_micro
from config.errors import QuotaExceeded

# The clock; tests replace it (as DRF's SimpleRateThrottle.timer).
clock: Callable[[], float] = time.time

__all__ = [
    "MICRO",
    "AccountSnapshot",
    "Admission",
    "Ask",
    "Limits",
    "QuotaExceeded",
    "ReservationRecord",
    "WorkerAlive",
    "account_of",
    "accounts",
    "admit",
    "clock",
    "credit_balance",
    "forget_counters",
    "from_micro",
    "invalidate",
    "month_bounds",
    "reap_worker",
    "release",
    "reservation_forget",
    "reserved_total",
    "settle",
    "sweep",
    "to_micro",
]
