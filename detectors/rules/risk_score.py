"""The customer's overall risk score, from the online models."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, pct, register
from pipeline.events import EVENT_TYPES


class RiskScoreOptions(DetectorOptions):
    risk_warning: float = Field(0.75, ge=0.0, le=1.0, description="risk score that raises a warning")
    risk_critical: float = Field(0.85, ge=0.0, le=1.0, description="risk score that raises a critical alert")
    risk_jump: float = Field(0.2, ge=0.01, le=1.0,
                             description="rise of the risk score within one evaluation that is noted (info)")
    jump_days: int = Field(30, ge=1, le=365,
                           description="days a jump keeps its warning while the score stays that much higher")

    def check(self) -> str | None:
        if self.risk_warning >= self.risk_critical:
            return "risk_warning must be below risk_critical"
        return None


@register
class RiskScore(Detector):
    """Risk score (0..1) at the warning or critical level, or jumping.

    The score (``pipeline.models``) is the open exposure's probability of
    late payment combined with the overdue share, the rating's PD, a recent
    drift in payment habits, broken promises and legal events. Warning from
    0.75, critical from 0.85 (below 0.7 about half the customers the score
    picks out never default). A rise of 0.2 or more within one evaluation is
    noted (info), for as long as the score stays that far above where it was
    (at most ``jump_days``). The score goes in the alert's ``score``.

    >>> from pipeline.builders import register as registered, invoice
    >>> from detectors.base import ModelSignals
    >>> from detectors.testing import run_detector
    >>> events = [registered(), invoice("I1", 5000)]
    >>> signals = ModelSignals(risk_score=0.88, previous_risk_score=0.8, late_probability={"I1": 0.88})
    >>> findings = run_detector(RiskScore(), events, signals=signals)
    >>> findings[0].severity, findings[0].title, findings[0].score
    ('critical', 'Risk score 0.88 (critical from 0.85)', 0.88)
    >>> jumped = run_detector(RiskScore(), events, signals=ModelSignals(risk_score=0.31, previous_risk_score=0.08))
    >>> jumped[0].severity, jumped[0].title
    ('info', 'Risk score jumped from 0.08 to 0.31')
    >>> run_detector(RiskScore(), events, signals=ModelSignals(risk_score=0.2, previous_risk_score=0.15))
    []
    """

    name = "risk_score"
    episode = "condition"
    triggers = frozenset({*EVENT_TYPES, "tick"})
    Options = RiskScoreOptions
    options: RiskScoreOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        opts = self.options
        score = ctx.models.risk_score
        if score is None:
            return [], memory
        previous = ctx.models.previous_risk_score
        today = ctx.today.toordinal()
        # A jump is remembered as the score it jumped from and the day.
        jump = memory.get("jump")
        if previous is not None and score - previous >= opts.risk_jump and (jump is None or previous < jump[0]):
            jump = [previous, today]
        if jump is not None and (score - jump[0] < opts.risk_jump or today - jump[1] > opts.jump_days):
            jump = None
        memory = {"jump": jump} if jump is not None else {}
        if score >= opts.risk_critical:
            severity, level, title = "critical", opts.risk_critical, f"Risk score {score:.2f} (critical from {opts.risk_critical:.2f})"
        elif score >= opts.risk_warning:
            severity, level, title = "warning", opts.risk_warning, f"Risk score {score:.2f} (warning from {opts.risk_warning:.2f})"
        elif jump is not None:
            severity, level, title = "info", None, f"Risk score jumped from {jump[0]:.2f} to {score:.2f}"
        else:
            return [], memory
        reasons = []
        if level is not None:
            reasons.append(Reason("risk_score", f"Risk score {score:.2f} is at or above the {severity} level {level:.2f}",
                                  score, level))
        if jump is not None:
            reasons.append(Reason("risk_jump",
                                  f"Risk score rose from {jump[0]:.2f} to {score:.2f} (alert from a rise of {opts.risk_jump:.2f})",
                                  round(score - jump[0], 4), opts.risk_jump))
        late = ctx.models.late_probability
        if late:
            likely = sorted((p, invoice_id) for invoice_id, p in late.items() if p >= 0.5)
            reasons.append(Reason(
                "late_exposure",
                f"{len(likely)} of {len(late)} open invoices are likely to be paid late"
                + (f" (highest: {likely[-1][1]} at {pct(likely[-1][0])})" if likely else ""),
                float(len(likely)), None,
            ))
        rating = ctx.ledger.profile.ratings[-1] if ctx.ledger.profile.ratings else None
        if rating is not None and rating[4] is not None:
            reasons.append(Reason("rating_pd", f"{rating[2]} rating {rating[3]}, probability of default {pct(rating[4])}",
                                  float(rating[4]), None))
        return [self.finding(severity, title, reasons, ctx, score=score)], memory
