"""Money in integer micro-dollars, the tenant's billing month, and the clock."""

from __future__ import annotations

import math
import zoneinfo
from datetime import UTC, datetime, timedelta
from decimal import Decimal

MICRO = Decimal("0.000001")
WINDOW = 60  # seconds: limits are per minute, in fixed windows aligned to the minute
COUNTER_TTL = 45 * 24 * 3600  # a month's counters outlive the month


def now() -> float:
    """The clock, read through the package so tests can replace ``billing.admission.clock``
    (as DRF's ``SimpleRateThrottle.timer``)."""
    from billing import admission

    return admission.clock()


def to_micro(amount: Decimal) -> int:
    """USD to integer micro-dollars, rounded up: a reservation never holds too little."""
    return math.ceil(amount / MICRO)


def from_micro(value: int) -> Decimal:
    return (Decimal(value) * MICRO).quantize(MICRO)


# Per time zone, the month month_bounds last answered: (start, end, its answer).
_last_month: dict[str, tuple[float, float, tuple[str, datetime, datetime]]] = {}


def month_bounds(tz_name: str, at: float) -> tuple[str, datetime, datetime]:
    """The tenant's billing month containing ``at``: its label and its UTC start and end."""
    # Every call of a request asks this; the month it last answered serves until it ends.
    cached = _last_month.get(tz_name)
    if cached is not None and cached[0] <= at < cached[1]:
        return cached[2]
    bounds = _month_bounds(tz_name, at)
    if len(_last_month) > 1000:
        _last_month.clear()
    _last_month[tz_name] = (bounds[1].timestamp(), bounds[2].timestamp(), bounds)
    return bounds


def _month_bounds(tz_name: str, at: float) -> tuple[str, datetime, datetime]:
    tz = zoneinfo.ZoneInfo(tz_name)
    local = datetime.fromtimestamp(at, tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return f"{start:%Y-%m}", start.astimezone(UTC), end.astimezone(UTC)
