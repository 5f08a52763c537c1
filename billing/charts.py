"""A daily spend chart as server-rendered SVG: bars per day, stacked by model.

No JavaScript and no CDN: the page is readable with scripts off, and the chart's numbers
are also given as a table for screen readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from html import escape

# Colour-blind-safe (the Okabe-Ito palette); the legend also names each model.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 28


@dataclass(frozen=True)
class Series:
    model: str
    colour: str
    total: Decimal


@dataclass(frozen=True)
class Chart:
    svg: str
    series: list[Series]
    days: list[tuple[date, Decimal]]
    total: Decimal


def _nice_max(value: Decimal) -> Decimal:
    """A round axis maximum at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return Decimal("0.01")
    step = Decimal(10) ** (value.adjusted())
    for factor in (1, 2, 5, 10):
        if step * factor >= value:
            return step * factor
    return step * 10


def _money(value: Decimal) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}".rstrip("0").rstrip(".")


def daily_spend_svg(*, start: date, end: date, rows: list[tuple[date, str, Decimal]]) -> Chart:
    """``rows`` are (day, model name, cost); days with nothing draw as empty slots."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    models: dict[str, Decimal] = {}
    cells: dict[tuple[date, str], Decimal] = {}
    for day, model, cost in rows:
        models[model] = models.get(model, Decimal(0)) + cost
        cells[(day, model)] = cells.get((day, model), Decimal(0)) + cost
    order = sorted(models, key=lambda m: (-models[m], m))
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(order)}
    per_day = [(d, sum((cells.get((d, m), Decimal(0)) for m in order), Decimal(0))) for d in days]
    top = _nice_max(max((v for _, v in per_day), default=Decimal(0)))

    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(days)
    bar = max(slot * 0.75, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title" class="chart" data-days="{len(days)}">',
        f'<title id="chart-title">Daily spend from {start} to {end}, stacked by model</title>',
    ]
    for i in range(5):  # gridlines and axis labels
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d4da"/>')
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{_money(value)}</text>'
        )
    for i, day in enumerate(days):
        x = LEFT + i * slot + (slot - bar) / 2
        y = float(TOP + plot_h)
        for model in order:
            cost = cells.get((day, model), Decimal(0))
            if not cost:
                continue
            h = float(cost / top) * plot_h
            y -= h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(h, 0.5):.1f}" '
                f'fill="{colour[model]}"><title>{day}: {escape(model)} {_money(cost)}</title></rect>'
            )
        if i == 0 or i == len(days) - 1 or (len(days) > 10 and i % (len(days) // 5) == 0):
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11" '
                f'fill="#555">{day:%b %d}</text>'
            )
    parts.append("</svg>")
    series = [Series(model=m, colour=colour[m], total=models[m]) for m in order]
    return Chart(svg="".join(parts), series=series, days=per_day, total=sum(models.values(), Decimal(0)))
