from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, pct, register
from detectors.rules._common import figures

BALANCE_CHANGES = frozenset({
    "tick", "invoice.issued", "invoice.adjusted", "invoice.dispute_resolved", "invoice.written_off",
    "payment.received", "payment.reversed",
})


class OverdueOptions(DetectorOptions):
    min_amount: float = Field(1000.0, ge=0, le=1e9, description="overdue amounts below this (limit currency) are ignored")
    info_days: int = Field(30, ge=1, le=365, description="days past due from which an amount is noted (info)")
    warning_days: int = Field(60, ge=1, le=365, description="days past due that make an amount a warning")
    critical_days: int = Field(90, ge=1, le=730, description="days past due that make an amount critical")
    critical_share_of_limit: float = Field(0.5, ge=0.01, le=10.0,
                                           description="amount past info_days, as a share of the limit, that is critical")

    def check(self) -> str | None:
        if self.info_days > self.warning_days:
            return "info_days must not be above warning_days"
        if self.warning_days >= self.critical_days:
            return "warning_days must be below critical_days"
        return None


@register
class Overdue(Detector):
    """Money past due, by how long. Runs on the clock as well as on events.

    Noted (info) when invoices more than 30 days past due add up to 1,000 or
    more; a warning past 60 days, critical past 90 days or when the amount
    more than 30 days late reaches half the credit limit. Because it runs on
    daily ticks it fires the day an invoice crosses the line, even if the
    customer sends nothing.

    >>> from datetime import date
    >>> from pipeline.builders import register as registered, invoice
    >>> from detectors.testing import run_detector
    >>> events = [registered(limit=100000), invoice("I1", 5000, issued_on="2026-01-01", terms=30)]
    >>> run_detector(Overdue(), events, today=date(2026, 3, 2))  # 30 days past due: not yet
    []
    >>> [f.severity for f in run_detector(Overdue(), events, today=date(2026, 3, 3))]
    ['info']
    >>> finding = run_detector(Overdue(), events, today=date(2026, 4, 2))[0]
    >>> finding.severity, finding.title
    ('warning', '5,000.00 EUR more than 60 days overdue')
    """

    name = "overdue"
    episode = "condition"
    triggers = BALANCE_CHANGES
    Options = OverdueOptions
    options: OverdueOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        opts = self.options
        pos = figures(ctx)  # the open invoices, aging, limit and currency: no whole position needed
        if pos.max_days_past_due <= opts.info_days:
            return [], memory  # nothing is late enough
        late = [inv for inv in pos.open_invoices if inv["days_past_due"] > opts.info_days]
        if not late:
            return [], memory
        late_amount = sum((inv["outstanding"] for inv in late), Decimal(0))
        if late_amount < Decimal(str(opts.min_amount)):
            return [], memory
        oldest = max(late, key=lambda inv: inv["days_past_due"])
        reasons = [
            Reason("overdue_amount",
                   f"{money(late_amount, pos.currency)} is more than {opts.info_days} days past due "
                   f"({len(late)} invoice{'s' if len(late) > 1 else ''}; oldest {oldest['invoice_id']}, "
                   f"{oldest['days_past_due']} days)",
                   float(late_amount), opts.min_amount),
        ]
        severity = "info"
        title = f"{money(late_amount, pos.currency)} more than {opts.info_days} days overdue"
        for level, days, code in (("warning", opts.warning_days, "overdue_warning_days"),
                                  ("critical", opts.critical_days, "overdue_critical_days")):
            if days <= opts.info_days:
                continue  # the same band as the note: already said
            amount = sum((inv["outstanding"] for inv in late if inv["days_past_due"] > days), Decimal(0))
            if amount >= Decimal(str(opts.min_amount)):
                severity = level
                title = f"{money(amount, pos.currency)} more than {days} days overdue"
                reasons.append(Reason(code, f"{money(amount, pos.currency)} is more than {days} days past due "
                                            f"({level} from {days} days)", float(amount), opts.min_amount))
        if opts.info_days == opts.warning_days and severity == "info":
            severity = "warning"  # no band of notes: past info_days is already a warning
        if pos.credit_limit:
            share = float(late_amount / pos.credit_limit)
            if share >= opts.critical_share_of_limit:
                severity = "critical"
                reasons.append(Reason("overdue_share_of_limit",
                                      f"the amount more than {opts.info_days} days late is {pct(share)} of the credit limit",
                                      share, opts.critical_share_of_limit))
        aging = ", ".join(f"{bucket}: {amount:,.2f}" for bucket, amount in pos.aging.items() if amount and bucket != "current")
        reasons.append(Reason("aging", f"aging by days past due — {aging}"))
        evidence = tuple(f"invoice:{inv['invoice_id']}" for inv in late[:10])
        return [self.finding(severity, title, reasons, ctx, ())], memory
