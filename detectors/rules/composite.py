from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, register
from detectors.rules._common import ALL_TRIGGERS
from detectors.rules._grading import MaxSeverity, capped, max_severity_field


class CompositeOptions(DetectorOptions):
    min_detectors: int = Field(3, ge=2, le=20,
                               description="this many different detectors finding something within window_days is critical")
    window_days: int = Field(30, ge=1, le=180, description="how far back findings count (at most 180 days are kept)")
    ignore: tuple[str, ...] = Field(("credit_limit", "credit_limit_review", "disputes", "payment_habit", "risk_score"),
                                    description="detectors not counted: recommendations, scores that already "
                                                "combine the other signs, and signs common in healthy customers "
                                                "(over the limit, a dispute, a drift in days late)")
    max_severity: MaxSeverity = max_severity_field("critical", "a combination of signs")

    def check(self) -> str | None:
        from detectors.base import REGISTRY

        unknown = sorted(set(self.ignore) - set(REGISTRY))
        if unknown:
            return f"ignore names unknown detector(s): {', '.join(unknown)}"
        return None


@register
class Composite(Detector):
    """Several different warning signs at once.

    Each detector alone may be explainable (a broken promise, a bounced
    payment, a new bank account); three different ones within 30 days rarely
    are. Critical when 3 different detectors have found something about the
    customer in the last 30 days (any severity, including notes such as a
    bank details change): this is how the signs that are only noted (info)
    on their own still raise a warning. It never counts itself, nor (by
    default, option ``ignore``) the limit-review recommendations and the
    model risk score, which already combine the other signs, nor the signs
    that healthy customers show all the time — an exposure over the limit,
    a dispute, a drift in days late. It runs after every other detector
    (``order = 100``) so it sees the findings of the same event.

    >>> from datetime import date
    >>> from pipeline.builders import register as registered
    >>> from detectors.testing import run_detector
    >>> recent = [(date(2025, 12, 1), "broken_promise"), (date(2026, 1, 2), "insurance_cover"),
    ...           (date(2026, 1, 20), "overdue"), (date(2026, 1, 22), "disputes"), (date(2026, 1, 25), "composite")]
    >>> run_detector(Composite(), [registered(day="2026-01-25")], recent=recent)  # too old, or not counted
    []
    >>> recent.append((date(2026, 1, 25), "payment_reversed"))
    >>> finding = run_detector(Composite(), [registered(day="2026-01-25")], recent=recent)[0]
    >>> finding.severity, finding.title
    ('critical', 'Several warning signs at once: insurance_cover, overdue, payment_reversed')
    """

    name = "composite"
    episode = "condition"
    triggers = ALL_TRIGGERS
    order = 100
    Options = CompositeOptions
    options: CompositeOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        opts = self.options
        if len(ctx.recent_findings) < opts.min_detectors:
            return [], memory  # fewer findings than the distinct detectors it takes
        today = ctx.today
        start = today - timedelta(days=opts.window_days - 1)
        # First only whether enough different detectors count (the common answer is no), then when each was seen.
        seen = {detector for day, detector in ctx.recent_findings if start <= day <= today}
        seen.discard(self.name)
        seen.difference_update(opts.ignore)
        if len(seen) < opts.min_detectors:
            return [], memory
        last_seen: dict[str, Any] = {}
        for day, detector in ctx.recent_findings:
            if detector in seen and start <= day <= today and (detector not in last_seen or day > last_seen[detector]):
                last_seen[detector] = day
        names = sorted(last_seen)
        reasons = [
            Reason("distinct_warning_signs",
                   f"{len(names)} different warning signs in the last {opts.window_days} days "
                   f"({capped('critical', opts.max_severity)} from {opts.min_detectors})",
                   float(len(names)), float(opts.min_detectors)),
            *(Reason("warning_sign", f"{name}: last found on {last_seen[name].isoformat()}") for name in names),
        ]
        title = f"Several warning signs at once: {', '.join(names)}"
        return [self.finding(capped("critical", opts.max_severity), title, reasons, ctx)], memory
