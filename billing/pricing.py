"""Turning tokens into money. Decimal throughout; rounding happens once, here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

MILLION = Decimal(1_000_000)
LEDGER_QUANTUM = Decimal("0.000000001")  # 9 decimal places


@dataclass(frozen=True)
class PriceSnapshot:
    """A price as the request path sees it: plain data, safe to cache."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    effective_from: datetime


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int


def price_at(prices: Sequence[PriceSnapshot], when: datetime) -> PriceSnapshot | None:
    """The price in effect at ``when``; ``prices`` is newest first."""
    for price in prices:
        if price.effective_from <= when:
            return price
    return None


def cost_of(usage: TokenUsage, price: PriceSnapshot) -> Decimal:
    """USD for ``usage`` at ``price``, rounded half-up to 9 decimal places."""
    raw = (usage.input_tokens * price.input_per_mtok + usage.output_tokens * price.output_per_mtok) / MILLION
    return raw.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_UP)


def usd(amount: Decimal) -> str:
    """An amount as clients see it: plain notation, never exponent form (no "0E-9")."""
    return f"{amount:f}"
