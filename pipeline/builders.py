"""Builders of validated events with little ceremony (tests, doctests, simulations)."""

from __future__ import annotations

import itertools
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from pipeline.events import Event, validate_event

_ids = itertools.count(1)


def at(day: date | str, hour: int = 9) -> str:
    day = date.fromisoformat(day) if isinstance(day, str) else day
    return datetime.combine(day, time(hour), tzinfo=timezone.utc).isoformat()


def make(kind: str, day: date | str, /, customer: str = "C1", event_id: str | None = None, **fields: Any) -> Event:
    body = {
        "event_id": event_id or f"ev-{next(_ids)}",
        "type": kind,
        "customer_id": customer,
        "occurred_at": at(day),
        **{key: (str(value) if not isinstance(value, (str, int, type(None))) else value) for key, value in fields.items()},
    }
    return validate_event(body)


def register(day="2026-01-01", limit=50000, currency="EUR", terms=30, **kw):
    return make("customer.registered", day, name="Acme GmbH", country="DE", credit_limit=limit,
                currency=currency, payment_terms_days=terms, **kw)


def invoice(invoice_id, amount, issued_on="2026-01-10", terms=30, currency="EUR", **kw):
    issued = date.fromisoformat(issued_on)
    return make("invoice.issued", issued, invoice_id=invoice_id, amount=f"{amount:.2f}" if not isinstance(amount, str) else amount,
                currency=currency, issued_on=issued.isoformat(), due_on=(issued + timedelta(days=terms)).isoformat(), **kw)


def payment(payment_id, amount, received_on="2026-02-01", invoice_id=None, currency="EUR", **kw):
    fields = dict(payment_id=payment_id, amount=f"{amount:.2f}" if not isinstance(amount, str) else amount,
                  currency=currency, received_on=received_on, **kw)
    if invoice_id is not None:
        fields["invoice_id"] = invoice_id
    return make("payment.received", received_on, **fields)
