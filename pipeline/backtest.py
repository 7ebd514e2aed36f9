"""Offline replay through exactly the code the live worker runs.

Events are applied in event-time order (file order breaks ties); the clock
is event time and never runs backwards. When it passes into a new day,
each customer that asked to be woken on or before that day gets a tick — so
aging, broken promises and "N days late" labels fire on the right day
without scanning every customer every day: the work grows with events and
wake-ups, not with customers × days.
"""

from __future__ import annotations

import gc
import heapq
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from typing import Any, Callable, Iterable, TextIO

from pipeline.alerts import AlertUpdate
from pipeline.config import LedgerConfig
from pipeline.engine import CustomerRecord, RiskEngine
from pipeline.events import InvalidEvent, parse_event
from pipeline.ledger import LedgerRejected


@dataclass
class BacktestResult:
    events: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert_id -> latest revision
    updates: list[AlertUpdate] = field(default_factory=list)
    first_raised: dict[str, str] = field(default_factory=dict)  # alert_id -> raised_at
    records: dict[str, CustomerRecord] = field(default_factory=dict)
    ticks: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)
    feedback: dict[str, Any] | None = None  # the reviewer-feedback model's metrics, when verdicts were replayed

    @property
    def by_detector(self) -> dict[str, int]:
        return dict(sorted(Counter(alert["detector"] for alert in self.alerts.values()).items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "rejected": self.rejected,
            "alerts": sorted(self.alerts.values(), key=lambda a: (a["raised_at"], a["alert_id"])),
            "by_detector": self.by_detector,
            "model": self.model,
            **({"feedback_model": self.feedback} if self.feedback is not None else {}),
            "ticks": self.ticks,
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3),
        }


def _start_of(day: date) -> datetime:
    return datetime.combine(day, dtime(0), tzinfo=timezone.utc)


class Replay:
    """The engine, a clock and a wake-up schedule; feed it events one by one."""

    def __init__(self, engine: RiskEngine):
        self.engine = engine
        self.records: dict[str, CustomerRecord] = {}
        self.now: datetime | None = None
        self._wake: list[tuple[date, str]] = []
        self._wake_of: dict[str, date] = {}
        self.ticks = 0

    def _schedule(self, record: CustomerRecord, today: date) -> None:
        wake = self.engine.next_wake(record, today)
        customer_id = record.customer_id
        if wake is None:
            self._wake_of.pop(customer_id, None)
        elif self._wake_of.get(customer_id) != wake:
            self._wake_of[customer_id] = wake
            heapq.heappush(self._wake, (wake, customer_id))

    def advance(self, to: datetime) -> list[AlertUpdate]:
        """Move the clock to ``to``; tick every customer whose wake-up day has come."""
        updates: list[AlertUpdate] = []
        if self.now is not None and to <= self.now:
            return updates
        previous_day = self.now.date() if self.now is not None else None
        self.now = to
        if previous_day is None or to.date() == previous_day:
            return updates
        while self._wake and self._wake[0][0] <= to.date():
            day, customer_id = heapq.heappop(self._wake)
            if self._wake_of.get(customer_id) != day:
                continue  # superseded by a later schedule
            del self._wake_of[customer_id]
            record = self.records[customer_id]
            self.ticks += 1
            updates.extend(self.engine.on_tick(record, _start_of(day)))
            self._schedule(record, day)
        return updates

    def apply(self, event: Any) -> list[AlertUpdate]:
        updates = self.advance(event.occurred_at)
        assert self.now is not None
        record = self.records.get(event.customer_id)
        if record is not None and record.ledger.has_seen(event.event_id):
            return updates
        record, new = self.engine.on_event(record, event, self.now)
        self.records[event.customer_id] = record
        updates.extend(new)
        if not event.type.startswith("customer.") or event.type == "customer.terms_changed":
            self._schedule(record, self.now.date())
        return updates

    def finish(self, until: date | None) -> list[AlertUpdate]:
        """Run the clock on to ``until`` (inclusive), so that aging after the last event shows."""
        if until is None or self.now is None or until <= self.now.date():
            return []
        return self.advance(_start_of(until) + timedelta(hours=12))


def run_backtest(
    lines: Iterable[bytes],
    engine: RiskEngine,
    progress: Callable[[int], None] | None = None,
    until: date | None = None,
    feedback: Any = None,
) -> BacktestResult:
    """Replay ``lines`` through ``engine``.

    ``feedback`` (a ``pipeline.feedback.FeedbackReplay``) replays reviewers'
    verdicts: each alert revision is annotated as the worker does, and each
    verdict is learned when the clock reaches its review day.
    """
    result = BacktestResult()
    replay = Replay(engine)
    started = time.perf_counter()

    def collect(updates: list[AlertUpdate]) -> None:
        for update in updates:
            alert = update.alert
            if feedback is not None:
                _annotate(feedback, engine, replay, alert)
            result.alerts[alert["alert_id"]] = alert
            result.first_raised.setdefault(alert["alert_id"], alert["raised_at"])
            result.updates.append(update)

    parsed = []
    for number, raw in enumerate(lines, start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            parsed.append((parse_event(raw), number))
        except InvalidEvent as refused:
            result.rejected.append({"line": number, "reason": refused.reason})
    # History is replayed in event-time order (stable: file order breaks ties).
    parsed.sort(key=lambda item: item[0].occurred_at)
    # The replay makes next to no reference cycles (a few hundred objects over a year of 1,000
    # customers), but the cyclic collector would walk every customer's growing state again and
    # again: about 15 % of the replay's time. Paused for the replay, back on afterwards.
    collecting = gc.isenabled()
    gc.disable()
    # (see _to_oldest_generation for what happens to the replay's objects afterwards)
    try:
        for done, (event, number) in enumerate(parsed, start=1):
            try:
                before = replay.records.get(event.customer_id)
                duplicate = before is not None and before.ledger.has_seen(event.event_id)
                if feedback is not None:
                    feedback.learn_until(event.occurred_at.date())
                collect(replay.apply(event))
            except LedgerRejected as refused:
                result.rejected.append({"line": number, "reason": refused.reason})
                continue
            result.events += 1
            result.duplicates += duplicate
            if progress is not None and done % 5000 == 0:
                progress(done)
    finally:
        _to_oldest_generation()
        if collecting:
            gc.enable()
    result.rejected.sort(key=lambda item: item["line"])
    collect(replay.finish(until))
    result.records = replay.records
    result.ticks = replay.ticks
    result.seconds = time.perf_counter() - started
    metrics = getattr(engine.models, "metrics", None)
    result.model = metrics() if callable(metrics) else {}
    if feedback is not None:
        result.feedback = feedback.model.metrics()
    return result


def _to_oldest_generation() -> None:
    """Move every object the collector tracks into its oldest generation, without walking them.

    Millions of objects were made while the collector was paused; left in the
    youngest generation, the first collection afterwards would walk them all
    (and the next ones again, as they move up): as slow as collecting during
    the replay. ``freeze`` then ``unfreeze`` splices the lists into the oldest
    generation instead, where the next full collection looks at them once, as
    it would at any long-lived data. Skipped when the process froze objects
    of its own (``unfreeze`` would thaw those too).
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


def _annotate(feedback: Any, engine: RiskEngine, replay: Replay, alert: dict[str, Any]) -> None:
    """The reviewer-feedback features and estimate of an alert, from the customer's position now (as the worker)."""
    from pipeline.ledger import position

    record = replay.records.get(alert["customer_id"])
    pos = risk = None
    if record is not None and replay.now is not None:
        pos = position(record.ledger, replay.now.date(), engine.ledger_config).to_json()
        current = getattr(engine.models, "current_risk", None)
        risk = current(record) if current is not None else None
    feedback.annotate(alert, pos, risk)


class ProgressBar:
    """A one-line progress bar on stderr for long files (never on stdout)."""

    def __init__(self, total_lines: int, stream: TextIO = sys.stderr):
        self.total = max(total_lines, 1)
        self.stream = stream
        self.started = time.perf_counter()

    def __call__(self, done: int) -> None:
        share = min(done / self.total, 1.0)
        width = 30
        filled = int(share * width)
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {share * 100:5.1f}%  {done:,} lines  {rate:,.0f}/s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def build_engine(thresholds: Any, ledger_config: LedgerConfig, with_models: bool = True) -> RiskEngine:
    models = None
    if with_models:
        from pipeline.models import OnlineModels

        models = OnlineModels.from_options(thresholds.models, ledger_config)
    return RiskEngine(thresholds, ledger_config, models)
