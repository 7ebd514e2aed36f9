"""The risk engine: ledger → models → detectors → alerts, for one customer at a time.

Used unchanged by the live worker (clock = system time, ticks from a timer)
and by the backtest (clock = event time, a tick for each day that passes).
Everything a customer needs lives in its :class:`CustomerRecord`, which the
worker keeps in its Table: the ledger facts, the alert episodes, the
detectors' memory and the per-customer model state.

Per event::

    record, event ─ ledger.apply ─ models.on_event (score, then learn) ─ detectors
                   (triggered by this event type) ─ alerts.settle → [AlertUpdate]

Per tick (the clock passed into a new day, and this customer asked to be
woken on or before it)::

    record, today ─ models.on_tick ─ detectors (triggered by "tick") ─ alerts.settle
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Iterable, Protocol

import detectors  # noqa: F401 - registers the built-in detectors
from detectors.base import REGISTRY, DetectionContext, Detector, ModelSignals
from detectors.config import Thresholds
from pipeline.alerts import AlertBook, AlertUpdate, settle
from pipeline import codec
from pipeline.config import LedgerConfig
from pipeline.events import Event
from pipeline.ledger import (
    DEFAULT_CONFIG,
    CustomerState,
    LedgerRejected,
    apply,
    new_state,
    open_views,
)

#: How long findings are remembered for composite detectors.
RECENT_FINDINGS_DAYS = 180
_RECENT = timedelta(days=RECENT_FINDINGS_DAYS)
#: Days after the due date on which an open invoice moves to the next aging bucket.
_AGING_STEPS = (1, 31, 61, 91)


@dataclass(slots=True)
class RiskState:
    book: AlertBook = field(default_factory=AlertBook)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    recent: list[tuple[date, str]] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "b": self.book.to_json(),
            "m": self.memory,
            "s": [[day.isoformat(), name] for day, name in self.recent],
            "x": self.models,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RiskState:
        return cls(
            book=AlertBook.from_json(data["b"]),
            memory=data["m"],
            recent=[(date.fromisoformat(day), name) for day, name in data["s"]],
            models=data["x"],
        )


@dataclass(slots=True)
class CustomerRecord:
    ledger: CustomerState
    risk: RiskState = field(default_factory=RiskState)

    @property
    def customer_id(self) -> str:
        return self.ledger.customer_id


def encode_record(record: CustomerRecord) -> bytes:
    """The record's bytes in the changelog (``pipeline.codec``: a format byte, then compact compressed JSON)."""
    return codec.encode(record.ledger, record.risk.to_json())


def decode_record(raw: bytes) -> CustomerRecord:
    """A record from its changelog bytes, in the current format or any earlier one (plain JSON included)."""
    ledger, risk = codec.decode(raw)
    return CustomerRecord(ledger, RiskState.from_json(risk))


class ModelSuite(Protocol):
    """The online models, as the engine sees them (see ``pipeline.models``)."""

    def on_event(self, record: CustomerRecord, event: Event, today: date) -> ModelSignals: ...

    def on_tick(self, record: CustomerRecord, today: date) -> ModelSignals: ...

    def wake_dates(self, record: CustomerRecord, today: date) -> Iterable[date]: ...


class NoModels:
    """Rules only (and the default until models are configured)."""

    def on_event(self, record: CustomerRecord, event: Event, today: date) -> ModelSignals:
        return ModelSignals()

    def on_tick(self, record: CustomerRecord, today: date) -> ModelSignals:
        return ModelSignals()

    def wake_dates(self, record: CustomerRecord, today: date) -> Iterable[date]:
        return ()

    def first_wake(self, record: CustomerRecord, t: int) -> int:
        return 0


def _order(cls: type[Detector]) -> tuple[int, str]:
    return (getattr(cls, "order", 0), cls.name)


class RiskEngine:
    def __init__(
        self,
        thresholds: Thresholds | None = None,
        ledger_config: LedgerConfig = DEFAULT_CONFIG,
        models: ModelSuite | None = None,
        threshold_version: int | None = None,
    ):
        self.thresholds = thresholds or Thresholds()
        self.ledger_config = ledger_config
        self.models: ModelSuite = models if models is not None else NoModels()
        self.threshold_version = threshold_version
        self.detectors: list[Detector] = []
        for cls in sorted(REGISTRY.values(), key=_order):
            options = self.thresholds.options_for(cls.name)
            if options.enabled:
                self.detectors.append(cls(options))
        self._conditions = {d.name for d in self.detectors if d.episode == "condition"}
        self._by_trigger: dict[str, list[Detector]] = {}
        for detector in self.detectors:
            for trigger in detector.triggers:
                self._by_trigger.setdefault(trigger, []).append(detector)
        # (name, bound detect, detector) per trigger: the loop of _evaluate looks nothing up.
        self._runs: dict[str, tuple[tuple[str, Any, Detector], ...]] = {
            trigger: tuple((d.name, d.detect, d) for d in found) for trigger, found in self._by_trigger.items()
        }
        self._aging_first = _AGING_STEPS[0]

    # --- entry points ---------------------------------------------------------

    def on_event(self, record: CustomerRecord | None, event: Event, now: datetime) -> tuple[CustomerRecord, list[AlertUpdate]]:
        """Apply one event. Raises LedgerRejected (record unchanged) for an event that cannot apply.

        A duplicate event returns the record unchanged and no alerts.
        """
        if record is None:
            record = CustomerRecord(new_state(event.customer_id))
        if record.ledger.has_seen(event.event_id):
            return record, []
        apply(record.ledger, event, self.ledger_config)
        today = now.date()
        signals = self.models.on_event(record, event, today)
        updates = self._evaluate(record, event, today, now, signals, self._runs.get(event.type, ()))
        return record, updates

    def on_tick(self, record: CustomerRecord, now: datetime) -> list[AlertUpdate]:
        today = now.date()
        signals = self.models.on_tick(record, today)
        return self._evaluate(record, None, today, now, signals, self._runs.get("tick", ()))

    def next_wake(self, record: CustomerRecord, today: date) -> date | None:
        """The first day after ``today`` on which time alone can change this customer's alerts.

        Each open invoice 1, 31, 61 and 91 days after its due date (aging
        buckets), each promise the day after its deadline, and what the models
        ask for. O(open invoices + promises); the day numbers are compared as
        ordinals.
        """
        t = today.toordinal()
        best = 0  # the earliest day after today so far (0: none)
        first, steps = self._aging_first, _AGING_STEPS
        for view in open_views(record.ledger, self.ledger_config):
            due = view.due_on.toordinal()
            day = due + first
            if day <= t:  # past its first step: the next step still ahead, if any
                for offset in steps:
                    day = due + offset
                    if day > t:
                        break
                else:
                    continue
            if not best or day < best:
                best = day
        if record.ledger.promises:
            grace = self.ledger_config.promise_grace_days + 1
            for promise in record.ledger.promises.values():
                day = promise.promised_on.toordinal() + grace
                if t < day and (not best or day < best):
                    best = day
        first_wake = getattr(self.models, "first_wake", None)
        if first_wake is not None:
            day = first_wake(record, t)
            if day and (not best or day < best):
                best = day
        else:
            for wake in self.models.wake_dates(record, today):
                day = wake.toordinal()
                if t < day and (not best or day < best):
                    best = day
        return date.fromordinal(best) if best else None

    # --- internals --------------------------------------------------------------

    def _evaluate(
        self,
        record: CustomerRecord,
        event: Event | None,
        today: date,
        now: datetime,
        signals: ModelSignals,
        runs: Iterable[tuple[str, Any, Detector]],
    ) -> list[AlertUpdate]:
        risk = record.risk
        recent = risk.recent
        if recent:
            horizon = today - _RECENT
            if recent[0][0] < horizon:
                recent = risk.recent = [item for item in recent if item[0] >= horizon]
        episodes = risk.book.episodes
        # A condition whose episode is still open holds today, even if its detector did not run now.
        holding = None
        # The detectors with an open episode: only those need settling when they find nothing. (Only a
        # detector's own settle changes its episode, and each detector runs once here, so this stays true.)
        open_names: list[str] | tuple[()] = ()
        if episodes:
            conditions = self._conditions
            open_names = [name for name, episode in episodes.items() if episode.ended_on is None]
            holding = [(today, name) for name in open_names if name in conditions]
        ctx = DetectionContext(
            ledger=record.ledger,
            event=event,
            today=today,
            now=now,
            models=signals,
            recent_findings=recent + holding if holding else recent,
            ledger_config=self.ledger_config,
        )
        updates: list[AlertUpdate] = []
        memories = risk.memory
        for name, detect, detector in runs:
            memory = memories.get(name)
            findings, memory = detect(ctx, {} if memory is None else memory)
            if memory:
                memories[name] = memory
            elif name in memories:
                del memories[name]
            if not findings:
                if name not in open_names:
                    continue  # nothing found and no open episode to end: settling would change nothing
            else:
                for finding in findings:
                    if (today, finding.detector) not in recent[-16:]:
                        recent.append((today, finding.detector))
            update = settle(risk.book, detector, findings, ctx, self.threshold_version)
            if update is not None:
                updates.append(update)
        return updates


__all__ = [
    "CustomerRecord",
    "RiskEngine",
    "RiskState",
    "LedgerRejected",
    "ModelSuite",
    "NoModels",
    "encode_record",
    "decode_record",
]
