"""Helpers to run one detector by hand (doctests, tests): ledger in, findings out."""

from __future__ import annotations

import itertools
from datetime import date, datetime, time, timezone
from typing import Any, Iterable

from detectors.base import DetectionContext, Detector, Finding, ModelSignals
from pipeline.events import Event
from pipeline.ledger import apply


def run_detector(detector: Detector, events: Iterable[Event], today: date | None = None,
                 signals: ModelSignals | None = None, memory: dict[str, Any] | None = None,
                 recent: list | None = None) -> list[Finding]:
    """Apply the events, then evaluate the detector once with the last event as trigger.

    ``today`` defaults to the last event's day; passing a later day evaluates a
    clock tick on that day instead (no triggering event).
    """
    state = None
    events = list(events)
    for event in events:
        state = apply(state, event)
    last = events[-1]
    tick = today is not None and today > last.occurred_at.date()
    day = today or last.occurred_at.date()
    ctx = DetectionContext(
        ledger=state,
        event=None if tick else last,
        today=day,
        now=datetime.combine(day, time(12), tzinfo=timezone.utc),
        models=signals or ModelSignals(),
        recent_findings=recent or [],
    )
    findings, _ = detector.detect(ctx, dict(memory or {}))
    return findings


_event_ids = itertools.count(1)


def event(event_type: str, day: date | str, /, customer: str = "C1", event_id: str | None = None, **fields: Any) -> Event:
    """A validated event of any type, like ``pipeline.builders.make`` but with no field name reserved
    (``make`` cannot build a ``customer.legal_event``: its ``kind`` field clashes with ``make``'s first parameter).

    >>> event("customer.legal_event", "2026-02-01", kind="court_judgment").kind
    'court_judgment'
    """
    from pipeline.builders import at
    from pipeline.events import validate_event

    body = {
        "event_id": event_id or f"ev-t{next(_event_ids)}",
        "type": event_type,
        "customer_id": customer,
        "occurred_at": at(day),
        **{key: (str(value) if not isinstance(value, (str, int, type(None))) else value) for key, value in fields.items()},
    }
    return validate_event(body)
