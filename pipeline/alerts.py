"""From findings to alerts: one alert per episode, escalated, never spammed.

An *episode* is one stretch of time in which one detector keeps finding
something about one customer. It raises exactly one alert, whose id is
derived from (customer, detector, the event or tick that opened it): a replay
or a redelivered event computes the same id, so a sink that stores by id
never stores it twice. While the episode lasts, a finding of the same or a
lower severity changes nothing; a higher severity escalates the same alert
(a new revision), and so does new content for detectors that declare
``update_on_change`` (a recommendation whose figure moved). When a condition clears, the episode ends; if it comes back
within the detector's cooldown, the old alert is reopened rather than a new
one raised. So one customer has at most one live alert per detector: no
storms, however many events arrive.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from detectors.base import SEVERITY_RANK, DetectionContext, Detector, Finding

Change = Literal["raised", "escalated", "reopened", "updated"]


@dataclass(slots=True)
class Episode:
    alert_id: str
    severity: str
    raised_at: str
    opened_on: date
    last_on: date
    ended_on: date | None = None
    revision: int = 1
    digest: str | None = None  # of title and reasons, for detectors whose content matters (recommendations)

    def to_json(self) -> list[Any]:
        return [self.alert_id, self.severity, self.raised_at, self.opened_on.isoformat(), self.last_on.isoformat(),
                self.ended_on.isoformat() if self.ended_on else None, self.revision, self.digest]

    @classmethod
    def from_json(cls, data: list[Any]) -> Episode:
        alert_id, severity, raised_at, opened_on, last_on, ended_on, revision, *rest = data
        return cls(alert_id, severity, raised_at, date.fromisoformat(opened_on), date.fromisoformat(last_on),
                   date.fromisoformat(ended_on) if ended_on else None, revision, rest[0] if rest else None)


@dataclass(slots=True)
class AlertUpdate:
    """An alert as CONTRACT §3 describes it, plus what changed."""

    change: Change
    alert: dict[str, Any]

    @property
    def alert_id(self) -> str:
        return self.alert["alert_id"]


def alert_id_for(customer_id: str, detector: str, trigger: str) -> str:
    digest = hashlib.sha256(f"{customer_id}\x1f{detector}\x1f{trigger}".encode()).hexdigest()
    return f"al_{digest[:24]}"


@dataclass(slots=True)
class AlertBook:
    """A customer's episodes, by detector name; stored with the customer's state."""

    episodes: dict[str, Episode] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {name: episode.to_json() for name, episode in self.episodes.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertBook:
        return cls({name: Episode.from_json(value) for name, value in data.items()})

    def open_alerts(self) -> dict[str, Episode]:
        return {name: ep for name, ep in self.episodes.items() if ep.ended_on is None}


def _digest(finding: Finding) -> str:
    text = finding.title + "\x1f" + "\x1f".join(f"{r.code}={r.value}" for r in finding.reasons)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _trigger(ctx: DetectionContext) -> str:
    return ctx.event.event_id if ctx.event is not None else f"tick:{ctx.today.isoformat()}"


def _moment(ctx: DetectionContext) -> str:
    when: datetime = ctx.event.occurred_at if ctx.event is not None else ctx.now
    return when.isoformat()


def settle(
    book: AlertBook,
    detector: Detector,
    findings: list[Finding],
    ctx: DetectionContext,
    threshold_version: int | None = None,
) -> AlertUpdate | None:
    """Fold one detector's findings from one evaluation into the customer's episodes."""
    name = detector.name
    cooldown = timedelta(days=detector.options.cooldown_days)
    episode = book.episodes.get(name)
    today = ctx.today
    if episode is not None and detector.episode == "event" and episode.ended_on is None and today > episode.last_on + cooldown:
        episode.ended_on = episode.last_on + cooldown
    if not findings:
        if episode is not None and episode.ended_on is None and detector.episode == "condition":
            episode.ended_on = today
        return None
    finding = max(findings, key=lambda f: SEVERITY_RANK[f.severity])
    digest = _digest(finding) if detector.update_on_change else None
    if episode is None or (episode.ended_on is not None and today > episode.ended_on + cooldown):
        episode = Episode(alert_id_for(ctx.customer_id, name, _trigger(ctx)), finding.severity, _moment(ctx), today, today,
                          digest=digest)
        book.episodes[name] = episode
        change: Change | None = "raised"
    elif episode.ended_on is not None:
        # Came back within the cooldown: the same alert again, louder only if it is worse.
        episode.ended_on = None
        episode.last_on = today
        if SEVERITY_RANK[finding.severity] <= SEVERITY_RANK[episode.severity]:
            return None
        episode.severity = finding.severity
        episode.revision += 1
        change = "reopened"
    elif SEVERITY_RANK[finding.severity] > SEVERITY_RANK[episode.severity]:
        episode.severity = finding.severity
        episode.revision += 1
        episode.last_on = today
        episode.digest = digest
        change = "escalated"
    elif digest is not None and digest != episode.digest and SEVERITY_RANK[finding.severity] == SEVERITY_RANK[episode.severity]:
        # Same severity, new content that matters (a different recommended limit): a new revision.
        episode.digest = digest
        episode.revision += 1
        episode.last_on = today
        change = "updated"
    else:
        episode.last_on = today
        return None
    return AlertUpdate(change, _alert(ctx, finding, episode, threshold_version))


def _alert(ctx: DetectionContext, finding: Finding, episode: Episode, threshold_version: int | None) -> dict[str, Any]:
    profile = ctx.ledger.profile
    return {
        "alert_id": episode.alert_id,
        "customer_id": ctx.customer_id,
        "customer_name": profile.name,
        "detector": finding.detector,
        "severity": finding.severity,
        "title": finding.title,
        "reasons": [reason.to_json() for reason in finding.reasons],
        "score": finding.score,
        "raised_at": episode.raised_at,
        "updated_at": _moment(ctx),
        "event_ids": list(finding.event_ids),
        "status": "open",
        "revision": episode.revision,
        "threshold_version": threshold_version,
    }


def finite_float(value: Any) -> float | None:
    """A number read back from JSON (an alert's score or estimate, a position's figure), as a finite float;
    None for anything else."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
