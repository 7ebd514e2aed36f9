from __future__ import annotations

from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, pct, register
from detectors.rules._common import figures
from detectors.rules._grading import MaxSeverity, capped, max_severity_field

EXPOSURE_CHANGES = frozenset({
    "customer.registered", "customer.credit_limit_changed", "invoice.issued", "invoice.adjusted",
    "invoice.dispute_resolved", "invoice.written_off", "payment.received", "payment.reversed",
})


class CreditLimitOptions(DetectorOptions):
    warning_utilisation: float = Field(1.0, ge=0.1, le=5.0, description="exposure / credit limit that raises a warning")
    critical_utilisation: float = Field(1.2, ge=0.1, le=5.0, description="exposure / credit limit that is critical")
    max_severity: MaxSeverity = max_severity_field("info", "an exposure over the limit")

    def check(self) -> str | None:
        if self.warning_utilisation >= self.critical_utilisation:
            return "warning_utilisation must be below critical_utilisation"
        return None


@register
class CreditLimit(Detector):
    """Exposure against the credit limit.

    Warning from 100 % of the limit, critical from 120 %; a customer with a
    zero limit (cash in advance) is critical as soon as anything is owed.

    On its own an exposure over the limit is an order-release decision (ship
    or hold the next order), not a sign of default: customers with seasonal
    peaks run over their limit and pay. So by default it is noted (info,
    ``max_severity``); ``max_severity = "critical"`` gives the grading above,
    as the static baseline of ``benchmarks/detection_quality.py`` does.

    >>> from pipeline.builders import register as registered, invoice
    >>> from detectors.testing import run_detector
    >>> findings = run_detector(CreditLimit(), [registered(limit=50000), invoice("I1", 52000)])
    >>> findings[0].severity, findings[0].title
    ('info', 'Exposure at 104% of credit limit')
    >>> graded = CreditLimit(CreditLimit.Options(max_severity="critical"))
    >>> run_detector(graded, [registered(limit=50000), invoice("I1", 52000)])[0].severity
    'warning'
    >>> findings[0].reasons[0].value, findings[0].reasons[0].threshold
    (52000.0, 50000.0)
    """

    name = "credit_limit"
    episode = "condition"
    triggers = EXPOSURE_CHANGES
    Options = CreditLimitOptions
    options: CreditLimitOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        pos = figures(ctx)  # exposure, limit and currency only: no whole position needed
        limit = pos.credit_limit
        if limit is None or pos.exposure <= 0:
            return [], memory
        if limit == 0:
            reason = Reason("exposure_without_limit",
                            f"{money(pos.exposure, pos.currency)} owed by a customer with no credit limit (cash in advance)",
                            float(pos.exposure), 0.0)
            return [self.finding(capped("critical", self.options.max_severity),
                                 "Credit extended to a customer without a credit limit", [reason], ctx)], memory
        utilisation = float(pos.exposure / limit)
        if utilisation < self.options.warning_utilisation:
            return [], memory
        critical = utilisation >= self.options.critical_utilisation
        level = self.options.critical_utilisation if critical else self.options.warning_utilisation
        reason = Reason(
            "exposure_over_limit",
            f"Exposure {money(pos.exposure, pos.currency)} is {pct(utilisation)} of the credit limit "
            f"{money(limit, pos.currency)} ({'critical' if critical else 'warning'} level {pct(level)})",
            float(pos.exposure),
            float(limit) * level,
        )
        title = f"Exposure at {pct(utilisation)} of credit limit"
        return [self.finding(capped("critical" if critical else "warning", self.options.max_severity), title, [reason], ctx)], memory
