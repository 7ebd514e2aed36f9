"""Helpers to run one detector by hand (doctests, tests): ledger in, findings out."""

from __future__ import annotations

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
