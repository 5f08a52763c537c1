"""The price book's one rule: no change may alter the amounts that apply at the instant of
a call already billed.

A model's prices form a step function over time (each price runs from its start until the
next one starts). A change (an edit, an insert, a delete) is compared as two such
functions, before and after; where they differ, no ledger row of the model may fall. So a
price calls were billed at is read-only, and the way to change what a model costs is to
schedule a new price that starts now or later. Moving the first price of a model further
back (as ``seeddemo --history`` does) is allowed while no call falls in the new span.

A ledger row carries the instant its call was admitted, a moment after the route priced
it (``proxy.views._run``: the route first, then the call), so a span is widened by
``SLACK`` at its end: a call priced just before a span ended may carry an instant just
after. A call before a span's start was priced before it, and never counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db.models import Q

from billing.models import Price, UsageRecord

RATES = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "request_fee")
SLACK = timedelta(seconds=1)

Rates = tuple[Decimal | None, ...]
Span = tuple[datetime, datetime | None]


@dataclass(frozen=True)
class Entry:
    """One price as the book sees it: when it starts and what it charges."""

    effective_from: datetime
    rates: Rates

    @classmethod
    def of(cls, values: Mapping[str, object] | Price) -> Entry:
        get = values.get if isinstance(values, Mapping) else lambda name: getattr(values, name)
        rates = tuple(_rate(get(name)) for name in RATES)
        return cls(effective_from=get("effective_from"), rates=rates)  # type: ignore[arg-type]


def _rate(value: object) -> Decimal | None:
    return None if value is None or value == "" else Decimal(str(value))


def book_of(*, model_id: int) -> dict[int, Entry]:
    """The model's prices as they are stored, by primary key."""
    return {p.pk: Entry.of(p) for p in Price.objects.filter(model_id=model_id)}


def _applying(book: Iterable[Entry], at: datetime) -> Rates | None:
    started = [e for e in book if e.effective_from <= at]
    return max(started, key=lambda e: e.effective_from).rates if started else None


def changed_spans(before: Iterable[Entry], after: Iterable[Entry]) -> list[Span]:
    """The spans of time in which the price that applies differs between two books."""
    before, after = list(before), list(after)
    points = sorted({e.effective_from for e in (*before, *after)})
    spans: list[Span] = []
    for i, start in enumerate(points):
        end = points[i + 1] if i + 1 < len(points) else None
        if _applying(before, start) == _applying(after, start):
            continue
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)  # adjacent: one span
        else:
            spans.append((start, end))
    return spans


def billed_in(*, model_id: int, spans: Iterable[Span]) -> bool:
    """Whether any call of the model was billed within one of ``spans``."""
    where = Q(pk__in=[])
    for start, end in spans:
        span = Q(created_at__gte=start)
        where |= span & Q(created_at__lt=end + SLACK) if end is not None else span
    return UsageRecord.objects.filter(model_id=model_id).filter(where).exists()


def price_is_billed(price: Price) -> bool:
    """Whether a call was billed at this stored price (and so it may no longer change)."""
    if price.pk is None:
        return False
    stored = Price.objects.filter(pk=price.pk).values_list("effective_from", flat=True).first()
    if stored is None:
        return False
    after = (
        Price.objects.filter(model_id=price.model_id, effective_from__gt=stored)
        .order_by("effective_from")
        .values_list("effective_from", flat=True)
        .first()
    )
    return billed_in(model_id=price.model_id, spans=[(stored, after)])


def price_book_check(*, model_id: int, after: Iterable[Entry], before: Iterable[Entry] | None = None) -> None:
    """Refuse (``ValidationError``) a book that would change a price some call was billed at."""
    before = book_of(model_id=model_id).values() if before is None else before
    spans = changed_spans(before, after)
    if spans and billed_in(model_id=model_id, spans=spans):
        start, end = spans[0]
        until = f" to {end:%Y-%m-%d %H:%M:%S} UTC" if end is not None else ""
        raise ValidationError(
            f"This would change the price of calls already billed (from {start:%Y-%m-%d %H:%M:%S} UTC{until}). "
            "A price that calls were billed at cannot be edited, moved or deleted: schedule a new price "
            "that starts now or later instead.",
            code="price_billed",
        )


def price_save_check(price: Price) -> None:
    """The rule for saving one price: the stored book with this price put in (or replaced)."""
    book = book_of(model_id=price.model_id)
    before = list(book.values())
    book[price.pk if price.pk is not None else -1] = Entry.of(price)
    price_book_check(model_id=price.model_id, before=before, after=book.values())


def price_delete_check(price: Price) -> None:
    book = book_of(model_id=price.model_id)
    before = list(book.values())
    book.pop(price.pk, None)
    price_book_check(model_id=price.model_id, before=before, after=book.values())
