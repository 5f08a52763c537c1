"""What admission answers: rate-limit headers, and the 429s of a rate limit or a budget."""

from __future__ import annotations

import math
from decimal import Decimal

from billing.admission.reservation import Ask
from billing.admission.units import MICRO, WINDOW
from config.errors import QuotaExceeded, RateLimited


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def headers(ask: Ask, counts: list[int], now: float) -> dict[str, str]:
    reset = _duration(WINDOW - now % WINDOW)
    found: dict[str, str] = {}
    for kind, (key_limit, key_used), (tenant_limit, tenant_used) in (
        ("requests", (ask.key_limits.rpm, counts[0]), (ask.tenant_limits.rpm, counts[2])),
        ("tokens", (ask.key_limits.tpm, counts[1]), (ask.tenant_limits.tpm, counts[3])),
    ):
        # Report whichever limit binds more tightly.
        options = [
            (limit - used, limit) for limit, used in ((key_limit, key_used), (tenant_limit, tenant_used)) if limit
        ]
        if options:
            remaining, limit = min(options)
            found[f"x-ratelimit-limit-{kind}"] = str(limit)
            found[f"x-ratelimit-remaining-{kind}"] = str(max(remaining, 0))
            found[f"x-ratelimit-reset-{kind}"] = reset
    return found


_SUBJECTS = {
    "key_requests": ("requests", "requests per minute (RPM) for this key"),
    "key_tokens": ("tokens", "tokens per minute (TPM) for this key"),
    "tenant_requests": ("requests", "requests per minute (RPM) for this tenant"),
    "tenant_tokens": ("tokens", "tokens per minute (TPM) for this tenant"),
    "key_concurrent": ("requests", "concurrent requests for this key"),
    "tenant_concurrent": ("requests", "concurrent requests for this tenant"),
}


def rate_error(what: str, limit: int, used: int, ask: Ask, now: float) -> RateLimited:
    kind, label = _SUBJECTS[what]
    concurrent = what.endswith("concurrent")
    wait = 1 if concurrent else math.ceil(WINDOW - now % WINDOW)
    requested = ask.tokens if kind == "tokens" else 1
    return RateLimited(
        f"Rate limit reached on {label}: limit {limit}, used {used}, requested {requested}. "
        f"Please try again in {wait}s.",
        type=kind,
        headers={"Retry-After": str(wait)},
    )


_QUOTAS = {
    "tenant_budget": "This tenant's monthly budget is used up",
    "key_budget": "This API key's monthly budget is used up",
    "credit": "This tenant's prepaid credit is used up",
}


def quota_error(what: str, left: Decimal) -> QuotaExceeded:
    error = QuotaExceeded(
        f"{_QUOTAS[what]}: ${left.quantize(MICRO)} is left, less than this request could cost. "
        "Raise the budget, top up credit, or lower max_tokens."
    )
    error.limit = what  # issue 21: which limit, for billing.alerts
    return error
