"""The detector protocol and its registry.

A detector is pure: ``(context, memory, options) -> (findings, memory)``. The
context holds the customer's ledger state, the event that triggered the run
(``None`` for a clock tick), the clock's day and the model outputs. ``memory``
is the detector's own small per-customer state (a JSON-able dict); most
detectors keep none and derive everything from the ledger. No I/O, no wall
clock, no globals: the live worker and the backtest run the same code.

Two kinds of episode:

* ``condition`` detectors report what holds *now* (exposure over limit,
  invoices overdue). An evaluation that returns no finding ends the episode.
* ``event`` detectors report something that *happened* (a payment bounced).
  The episode stays open until ``cooldown_days`` pass without a new finding.

Which alert a finding raises, escalates or folds into is decided by
``pipeline.alerts``, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.events import Event
from pipeline.ledger import CustomerState, Position

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class Reason:
    """One sentence a credit controller understands, with the numbers behind it."""

    code: str
    message: str
    value: float | None = None
    threshold: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "value": self.value, "threshold": self.threshold}


@dataclass(frozen=True, slots=True)
class Finding:
    detector: str
    severity: Severity
    title: str
    reasons: tuple[Reason, ...]
    event_ids: tuple[str, ...] = ()
    score: float | None = None


@dataclass(slots=True)
class ModelSignals:
    """What the online models say about this customer at this moment."""

    late_probability: dict[str, float] = field(default_factory=dict)  # open invoice id -> P(late)
    invoice_anomaly: float | None = None  # score of the invoice in the triggering event, 0..1
    habit_drift: bool = False  # payment habits worsened (drift detector fired on this event)
    days_late_mean_before: float | None = None
    days_late_mean_now: float | None = None
    risk_score: float | None = None
    previous_risk_score: float | None = None


@dataclass(slots=True)
class DetectionContext:
    ledger: CustomerState
    event: Event | None  # None: a clock tick
    today: date
    now: datetime
    models: ModelSignals
    #: (day, detector) of every finding in the recent past, for composite detectors.
    recent_findings: list[tuple[date, str]] = field(default_factory=list)
    ledger_config: Any = None
    _position: Position | None = None

    @property
    def customer_id(self) -> str:
        return self.ledger.customer_id

    @property
    def position(self) -> Position:
        """The customer's position today; computed once per evaluation, only if asked for."""
        if self._position is None:
            from pipeline.ledger import DEFAULT_CONFIG, position

            self._position = position(self.ledger, self.today, self.ledger_config or DEFAULT_CONFIG)
        return self._position

    @property
    def event_type(self) -> str:
        return "tick" if self.event is None else self.event.type

    def evidence(self, *more: str) -> tuple[str, ...]:
        ids = [self.event.event_id] if self.event is not None else []
        return tuple(dict.fromkeys([*ids, *more]))


class DetectorOptions(BaseModel):
    """Options every detector has; detectors add their thresholds with ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    cooldown_days: int = Field(7, ge=0, le=365, description="quiet days before an episode may start again")


class Detector:
    """Base class: subclasses set the class attributes and implement ``detect``."""

    name: ClassVar[str]
    episode: ClassVar[Literal["condition", "event"]]
    #: Event types that can change this detector's answer; "tick" = the clock passing a day.
    triggers: ClassVar[frozenset[str]]
    Options: ClassVar[type[DetectorOptions]] = DetectorOptions
    #: A finding whose content changes at the same severity updates the alert (recommendations).
    update_on_change: ClassVar[bool] = False

    def __init__(self, options: DetectorOptions | None = None):
        self.options = options if options is not None else self.Options()

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        raise NotImplementedError

    def finding(self, severity: Severity, title: str, reasons: list[Reason], ctx: DetectionContext,
                evidence: tuple[str, ...] = (), score: float | None = None) -> Finding:
        return Finding(self.name, severity, title, tuple(reasons), ctx.evidence(*evidence), score)


REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: add a detector to the one registry, by its name."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two detectors are named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def money(value: Decimal | float, currency: str) -> str:
    return f"{Decimal(value):,.2f} {currency}"


def pct(value: float | Decimal) -> str:
    return f"{float(value) * 100:.0f}%"
