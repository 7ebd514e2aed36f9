"""Small helpers shared by the rule detectors (not a detector itself)."""

from __future__ import annotations

from datetime import date
from typing import Any
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from detectors.base import DetectionContext
from pipeline.events import EVENT_TYPES
from pipeline.ledger import DEFAULT_CONFIG, Figures
from pipeline.ledger import figures as ledger_figures

#: Every input event type plus the clock.
ALL_TRIGGERS = frozenset(EVENT_TYPES) | {"tick"}


def dec(value: float | int | str | Decimal) -> Decimal:
    """A threshold (a float option) as an exact Decimal, the way a person typed it."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def stamp_day(stamp: str) -> date:
    """The day of a ledger stamp (UTC ISO text, as ``pipeline.ledger`` stores it)."""
    return date.fromisoformat(stamp[:10])


def in_limit_currency(ctx: DetectionContext, amount: Decimal, currency: str) -> Decimal:
    """``amount`` in ``currency`` converted to the customer's limit currency (the currency of ``Position``)."""
    config = ctx.ledger_config or DEFAULT_CONFIG
    shown = ctx.ledger.profile.currency or config.base_currency
    if currency == shown:
        return amount
    rates = config.fx_rates
    if currency not in rates or shown not in rates:
        return amount
    return (amount * rates[currency] / rates[shown]).quantize(Decimal("0.01"))


def round_to(amount: Decimal, step: float, how: str = "nearest") -> Decimal:
    """Round money to a multiple of ``step`` (``down``, ``up`` or ``nearest``).

    >>> round_to(Decimal("37499.99"), 1000, "down"), round_to(Decimal("62500"), 1000), round_to(Decimal("1"), 1000, "up")
    (Decimal('37000'), Decimal('63000'), Decimal('1000'))
    """
    unit = dec(step)
    if unit <= 0:
        return amount
    mode = {"down": ROUND_FLOOR, "up": ROUND_CEILING, "nearest": ROUND_HALF_UP}[how]
    return (amount / unit).quantize(Decimal(1), rounding=mode) * unit


#: (context, ledger revision, figures) of the last call: the detectors of one evaluation share a context.
_last: tuple[Any, int, Any] = (None, -1, None)


def figures(ctx: DetectionContext) -> Figures:
    """The cheap parts of ``ctx.position`` (see ``pipeline.ledger.Figures``): read these to decide
    whether there is anything to report before building the whole position."""
    global _last
    last = _last
    if last[0] is ctx and last[1] == ctx.ledger.events_applied:
        return last[2]
    found = ledger_figures(ctx.ledger, ctx.today, ctx.ledger_config or DEFAULT_CONFIG)
    _last = (ctx, ctx.ledger.events_applied, found)
    return found
