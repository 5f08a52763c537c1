"""Money in an invoice currency: ISO 4217 minor units, the one rounding rule, and printing.

Every figure is rounded **half-up to its currency's minor unit, once, where it is made**:
a line when it is converted, tax once on the invoice's net, and a total is the sum of
rounded figures. The minor unit comes from ISO 4217 (the ``iso4217`` package): two places
for USD and EUR, none for KRW and JPY, three for BHD and KWD.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

import iso4217
from django.core.exceptions import ValidationError

USD = "USD"
# ISO 3166-1 alpha-2: two capitals. The list of countries changes; the shape does not.
_COUNTRY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@lru_cache(maxsize=256)
def exponent(currency: str) -> int:
    """The currency's minor-unit digits (ISO 4217); ValueError for an unknown code."""
    try:
        found = iso4217.Currency(currency.upper())
    except ValueError:
        raise ValueError(f"'{currency}' is not an ISO 4217 currency code, e.g. USD, EUR, KRW.") from None
    digits = found.exponent
    if digits is None:  # funds and metals (XAU, XDR) have none: not invoiceable
        raise ValueError(f"'{currency}' has no minor unit (a fund or a metal): invoice in a currency.")
    return int(digits)


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-exponent(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """The one rounding rule: half-up to the currency's minor unit."""
    return amount.quantize(quantum(currency), rounding=ROUND_HALF_UP)


def convert(amount_usd: Decimal, *, rate: Decimal, currency: str) -> Decimal:
    """A USD amount in ``currency`` at ``rate`` (units per USD), rounded once."""
    return round_money(amount_usd * rate, currency)


def tax_of(net: Decimal, *, rate_percent: Decimal, currency: str) -> Decimal:
    """Tax on a net amount, rounded once (half-up to the minor unit)."""
    return round_money(net * rate_percent / 100, currency)


def format_money(amount: Decimal, currency: str) -> str:
    """``USD 1,234.50``, ``KRW 1,234,500``, ``-EUR 3.20``: the code, never an ambiguous symbol."""
    places = exponent(currency)
    sign = "-" if amount < 0 else ""
    return f"{sign}{currency} {abs(amount):,.{places}f}"


def validate_currency(value: str) -> None:
    try:
        exponent(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if value != value.upper():
        raise ValidationError(f"Write the currency code in capitals: {value.upper()}.")


def validate_country(value: str) -> None:
    if value and (len(value) != 2 or not set(value) <= _COUNTRY_CHARS):
        raise ValidationError(f"'{value}' is not an ISO 3166 country code: two capitals, e.g. DE, KR, US.")


def usd_cents(amount: Decimal | None) -> str:
    """A USD amount for a list: to the cent, half-up, e.g. ``$1,234.57`` (``—`` for none).
    Detail pages show the amount in full."""
    if amount is None:
        return "—"
    rounded = round_money(Decimal(amount), USD)
    return f"{'-' if rounded < 0 else ''}${abs(rounded):,.2f}"


def usd_rate(rate: Decimal) -> str:
    """A price per million tokens as people write it: at least to the cent, exact beyond
    (``9.60``, ``0.504``, ``10.00``), never ``9.600000`` or ``1E+1``."""
    exact = format(Decimal(rate).normalize(), "f")
    return f"{Decimal(rate):.2f}" if "." not in exact or len(exact.split(".")[1]) < 2 else exact
