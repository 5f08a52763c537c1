"""Rate limits without Redis (the embedded default): per-process fixed windows."""

from __future__ import annotations

import threading

from billing.admission.answers import rate_error
from billing.admission.reservation import Ask
from billing.admission.units import WINDOW

_lock = threading.Lock()
_counts: dict[tuple[str, int], int] = {}


def rate_limits(ask: Ask, now: float) -> None:
    """The embedded default's stand-in for the Redis script's windows."""
    minute = int(now // WINDOW)
    subjects = [
        (f"k{ask.api_key_id}:req", ask.key_limits.rpm, 1, "key_requests"),
        (f"k{ask.api_key_id}:tok", ask.key_limits.tpm, ask.tokens, "key_tokens"),
        (f"t{ask.tenant_id}:req", ask.tenant_limits.rpm, 1, "tenant_requests"),
        (f"t{ask.tenant_id}:tok", ask.tenant_limits.tpm, ask.tokens, "tenant_tokens"),
    ]
    with _lock:
        for name, limit, inc, what in subjects:
            used = _counts.get((name, minute), 0)
            if limit and used + inc > limit:
                raise rate_error(what, limit, used, ask, now)
        if len(_counts) > 100_000:
            _counts.clear()
        for name, _, inc, _ in subjects:
            _counts[(name, minute)] = _counts.get((name, minute), 0) + inc
