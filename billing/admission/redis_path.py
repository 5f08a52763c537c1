"""Admission and settling through Redis: one script call each (``lua/admit.lua``,
``lua/settle.lua``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.conf import settings

from billing.admission import counters, inflight, keys, scripts
from billing.admission.accounts import account_of
from billing.admission.answers import headers, quota_error, rate_error
from billing.admission.reservation import Admission, Ask
from billing.admission.units import WINDOW, from_micro, to_micro
from config.errors import InvalidRequest


def _budget(amount: Any) -> int:
    """A budget in micro-dollars, or -1 for none. One above what a script holds exactly
    (about $100 million) is as good as none for one request's check."""
    return -1 if amount is None else min(to_micro(amount), scripts.LUA_INT_MAX)


def admit(ask: Ask, now: float, month: str, start: datetime, end: datetime) -> Admission:
    minute = int(now // WINDOW)
    t, k = ask.tenant_id, keys.key_subject(ask.api_key_id)
    prepaid = account_of(t).prepaid
    deadline = now + settings.TOLLWAY["RESERVATION_SECONDS"]
    amount = to_micro(ask.amount)
    if amount > scripts.LUA_INT_MAX:
        raise InvalidRequest("This request could cost more than one request may reserve; lower max_tokens.")
    money = keys.money(t, ask.api_key_id, month)
    named_keys = {
        "key_req": keys.window(t, k, minute, "req"),
        "key_tok": keys.window(t, k, minute, "tok"),
        "tenant_req": keys.window(t, "t", minute, "req"),
        "tenant_tok": keys.window(t, "t", minute, "tok"),
        "key_cc": keys.concurrent(t, k),
        "tenant_cc": keys.concurrent(t, "t"),
        "tenant_spent": money["tenant_spent"],
        "key_spent": money["key_spent"],
        "tenant_resv": keys.held(t, "t"),
        "key_resv": keys.held(t, k),
        "credit": money["credit"],
        "reservation": keys.reservation(t, ask.request_id),
        "deadlines": keys.deadlines(t),
        "generation": money["generation"],
        "tenant_built": money["tenant_built"],
        "key_built": money["key_built"],
        "credit_built": money["credit_built"],
    }
    record = json.dumps(ask.record_json)
    args: dict[str, int | str] = {
        "key_rpm": ask.key_limits.rpm or 0,
        "key_tpm": ask.key_limits.tpm or 0,
        "tenant_rpm": ask.tenant_limits.rpm or 0,
        "tenant_tpm": ask.tenant_limits.tpm or 0,
        "key_concurrent": ask.key_limits.concurrent or 0,
        "tenant_concurrent": ask.tenant_limits.concurrent or 0,
        "tokens": ask.tokens,
        "amount": amount,
        "tenant_budget": _budget(ask.tenant_budget),
        "key_budget": -1 if ask.api_key_id is None else _budget(ask.key_budget),
        "prepaid": 1 if prepaid else 0,
        "window_ttl": WINDOW * 2,
        "deadline": f"{deadline:.3f}",
        "request_id": ask.request_id,
        "record": record,
        "hold_ttl": int(settings.TOLLWAY["RESERVATION_SECONDS"]) + 3600,
        "worker": inflight.worker(),
    }

    def run() -> list[str]:
        return [_text(x) for x in scripts.ADMIT(keys=named_keys, args=args)]

    result = run()
    if result[0] == "init":
        result = counters.admit_after_rebuild(ask, month, start, end, prepaid, run)
    if result[0] == "rate":
        raise rate_error(result[1], int(result[2]), int(result[3]), ask, now)
    if result[0] == "quota":
        raise quota_error(result[1], from_micro(max(int(float(result[2])), 0)))
    if result[0] != "ok":
        raise RuntimeError(f"admission script answered {result!r}")
    inflight.add(
        inflight.InFlight(
            request_id=ask.request_id,
            tenant_id=t,
            api_key_id=ask.api_key_id,
            amount=amount,
            tokens=ask.tokens,
            deadline=deadline,
            record=record,
            key_tokens=named_keys["key_tok"],
            tenant_tokens=named_keys["tenant_tok"],
        )
    )
    counts = [int(x) for x in result[1:5]]
    return Admission(ask.request_id, "redis", t, ask.api_key_id, month, headers=headers(ask, counts, now))


def settle(
    request_id: str, tenant_id: int, api_key_id: int | None, month: str, *, cost: int, tokens: int, counted: bool
) -> list[str]:
    """Release the reservation, count ``cost`` (micro-dollars) if ``counted``. Raises RedisError."""
    money = keys.money(tenant_id, api_key_id, month)
    result = scripts.SETTLE(
        keys={"reservation": keys.reservation(tenant_id, request_id), "deadlines": keys.deadlines(tenant_id), **money},
        args={"request_id": request_id, "actual": cost, "tokens": tokens, "count": 1 if counted else 0},
    )
    return [_text(x) for x in result]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
