"""Turning tokens into money. Decimal throughout; rounding happens once, here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

MILLION = Decimal(1_000_000)
LEDGER_QUANTUM = Decimal("0.000000001")  # 9 decimal places


@dataclass(frozen=True)
class PriceSnapshot:
    """A price as the request path sees it: plain data, safe to cache.

    The cache prices are optional: ``None`` means "charged at the input price".
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    effective_from: datetime
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    request_fee: Decimal = Decimal(0)
    # The share of the list price a Batch API line pays (``Price.batch_factor``), and the
    # share this snapshot charges: 1 for a live call, ``batch_factor`` once :meth:`for_batch`.
    batch_factor: Decimal = Decimal("0.5")
    factor: Decimal = Decimal(1)

    def for_batch(self) -> PriceSnapshot:
        """This price as a batch line pays it: the tenant's cost times ``batch_factor``."""
        return replace(self, factor=self.batch_factor)

    @property
    def cached_input_rate(self) -> Decimal:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def cache_write_rate(self) -> Decimal:
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok


@dataclass(frozen=True)
class TokenUsage:
    """A call's tokens, in one convention whatever the provider.

    ``input_tokens`` is every prompt token, cached or not. ``cached_input_tokens`` (read
    from a prompt cache) and ``cache_write_tokens`` (written to one, Anthropic only) are
    the parts of it priced at their own rates; the rest is priced at the input price.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return max(self.input_tokens - self.cached_input_tokens - self.cache_write_tokens, 0)


def price_at(prices: Sequence[PriceSnapshot], when: datetime) -> PriceSnapshot | None:
    """The price in effect at ``when``; ``prices`` is newest first."""
    for price in prices:
        if price.effective_from <= when:
            return price
    return None


def _list_raw(usage: TokenUsage, price: PriceSnapshot) -> Decimal:
    return (
        usage.uncached_input_tokens * price.input_per_mtok
        + usage.cached_input_tokens * price.cached_input_rate
        + usage.cache_write_tokens * price.cache_write_rate
        + usage.output_tokens * price.output_per_mtok
    ) / MILLION + price.request_fee


def cost_of(usage: TokenUsage, price: PriceSnapshot) -> Decimal:
    """USD for ``usage`` at list ``price`` (per-request fee included), rounded half-up to 9
    decimal places, once."""
    return _list_raw(usage, price).quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_UP)


def markup_factor(markup_percent: Decimal) -> Decimal:
    return 1 + Decimal(markup_percent) / 100  # Decimal(): an int percent must not become a float


@dataclass(frozen=True)
class Charge:
    """What a call costs the tenant (``cost``) and what it costs us at list price."""

    cost: Decimal
    upstream_cost: Decimal

    @property
    def margin(self) -> Decimal:
        return self.cost - self.upstream_cost


def charge_of(usage: TokenUsage, price: PriceSnapshot, *, markup_percent: Decimal = Decimal(0)) -> Charge:
    """The tenant's price (list x price factor x (1 + markup/100)) and our list cost, each
    rounded once from the exact amount, so neither inherits the other's rounding.

    The price factor (``PriceSnapshot.factor``, below 1 for a Batch API line) is a discount
    to the tenant only: Tollway runs a batch line as an ordinary call upstream, so what the
    provider costs us stays the list cost."""
    raw = _list_raw(usage, price)
    return Charge(
        cost=(raw * price.factor * markup_factor(markup_percent)).quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_UP),
        upstream_cost=raw.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_UP),
    )


def usd(amount: Decimal) -> str:
    """An amount as clients see it: plain notation, never exponent form (no "0E-9")."""
    return f"{amount:f}"
