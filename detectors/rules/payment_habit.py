"""A customer that has started to pay later than it used to."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, register
from detectors.rules._grading import MaxSeverity, capped, max_severity_field

#: Events on which an invoice can be settled, so a days-late value can arrive.
SETTLEMENTS = frozenset({
    "payment.received", "invoice.issued", "invoice.adjusted", "invoice.dispute_resolved", "invoice.written_off",
})


class PaymentHabitOptions(DetectorOptions):
    cooldown_days: int = Field(30, ge=0, le=365, description="quiet days before an episode may start again")
    min_increase_days: float = Field(5.0, ge=0.0, le=365.0,
                                     description="ignore a drift whose mean days late rose by less than this")
    critical_days_late: float = Field(60.0, ge=1.0, le=730.0,
                                      description="mean days late since the change that makes the drift critical")
    max_severity: MaxSeverity = max_severity_field("info", "a drift in payment habits")


@register
class PaymentHabit(Detector):
    """Payment habits worsened: the models' Page-Hinkley test on days late fired.

    Each settlement's days late (settlement day minus due day) goes through
    a Page-Hinkley test for an increase (``pipeline.models``); when it fires,
    this reports the mean days late before the change and since: a warning,
    critical when the customer now pays ``critical_days_late`` days late on
    average — by default capped to a note (info, ``max_severity``): the test
    fires for about a third of healthy customers over two years.

    >>> from pipeline.builders import register as registered, invoice, payment
    >>> from detectors.base import ModelSignals
    >>> from detectors.testing import run_detector
    >>> events = [registered(), invoice("I1", 1000), payment("P1", 1000, received_on="2026-03-08", invoice_id="I1")]
    >>> drift = ModelSignals(habit_drift=True, days_late_mean_before=2.0, days_late_mean_now=26.5)
    >>> findings = run_detector(PaymentHabit(), events, signals=drift)
    >>> findings[0].severity, findings[0].title
    ('info', 'Paying later: 26.5 days late on average, was 2.0')
    >>> findings[0].reasons[0].value, findings[0].reasons[0].threshold
    (26.5, 7.0)
    >>> run_detector(PaymentHabit(), events, signals=ModelSignals())
    []
    """

    name = "payment_habit"
    episode = "event"
    triggers = SETTLEMENTS
    Options = PaymentHabitOptions
    options: PaymentHabitOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        signals = ctx.models
        if not signals.habit_drift or signals.days_late_mean_now is None:
            return [], memory
        now = signals.days_late_mean_now
        before = signals.days_late_mean_before if signals.days_late_mean_before is not None else 0.0
        if now - before < self.options.min_increase_days:
            return [], memory
        critical = now >= self.options.critical_days_late
        reasons = [
            Reason("days_late_increase",
                   f"Invoices are now paid {now:.1f} days after their due date on average, "
                   f"against {before:.1f} days before the change (reported from +{self.options.min_increase_days:g} days)",
                   now, before + self.options.min_increase_days),
        ]
        if critical:
            reasons.append(Reason("days_late_critical",
                                  f"{now:.1f} days late on average is at or beyond the critical "
                                  f"{self.options.critical_days_late:g} days",
                                  now, self.options.critical_days_late))
        title = f"Paying later: {now:.1f} days late on average, was {before:.1f}"
        return [self.finding(capped("critical" if critical else "warning", self.options.max_severity), title, reasons, ctx)], memory
