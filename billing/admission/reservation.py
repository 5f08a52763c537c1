"""What the proxy hands to admission (an ``Ask`` with its ``ReservationRecord``) and what it
gets back (an ``Admission``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None


@dataclass(frozen=True)
class ReservationRecord:
    """What the sweeper needs to bill a reservation whose worker died: the call's most
    usage, at the prices it was admitted at. Kept as JSON in Redis and in Postgres
    (``Reservation.record``), and read back by ``billing.ledger.usage_record_from_reservation``."""

    tenant_id: int
    api_key_id: int | None
    model_id: int
    provider: str
    upstream_model: str
    input_price: Decimal
    output_price: Decimal
    price_from: datetime
    request_fee: Decimal
    markup_percent: Decimal
    input_tokens: int
    output_tokens: int
    streamed: bool
    api: str
    created_at: datetime
    timezone: str
    price_factor: Decimal = Decimal(1)  # a Batch API line's price carries the batch factor
    batch_id: str = ""

    def as_json(self) -> dict[str, Any]:
        # Every field is a scalar: a shallow copy (dataclasses.asdict deep-copies each
        # value, a fifth of admission's CPU in a profile of P1).
        data = dict(self.__dict__)
        for name in ("input_price", "output_price", "request_fee", "markup_percent", "price_factor"):
            data[name] = str(data[name])
        data["price_from"] = self.price_from.isoformat()
        data["created_at"] = self.created_at.isoformat()
        return data

    def dumps(self) -> str:
        return json.dumps(self.as_json())


@dataclass(frozen=True)
class Ask:
    """What one request asks of its tenant's and key's limits."""

    request_id: str
    tenant_id: int
    api_key_id: int | None
    tenant_limits: Limits
    key_limits: Limits
    tokens: int  # the estimated prompt plus the most output it may produce
    amount: Decimal  # the most it can cost, reserved until it settles
    tenant_budget: Decimal | None
    key_budget: Decimal | None
    timezone: str
    record: ReservationRecord | dict[str, Any]  # a dict from older callers is taken as is

    @property
    def record_json(self) -> dict[str, Any]:
        return self.record.as_json() if isinstance(self.record, ReservationRecord) else dict(self.record)

    @property
    def has_money_cap(self) -> bool:
        from billing.admission.accounts import account_of

        return self.tenant_budget is not None or self.key_budget is not None or account_of(self.tenant_id).prepaid


@dataclass
class Admission:
    """A taken reservation, and the rate-limit headers to send."""

    request_id: str
    mode: str  # "redis", "postgres" or "none"
    tenant_id: int
    api_key_id: int | None
    month: str
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
