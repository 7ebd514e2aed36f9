from __future__ import annotations

from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, pct, register
from detectors.rules._common import dec, figures
from detectors.rules._grading import MaxSeverity, capped, max_severity_field
from detectors.rules.credit_limit import EXPOSURE_CHANGES

#: A dispute opening or closing changes the disputed amount; cash and invoices change the exposure.
DISPUTE_CHANGES = EXPOSURE_CHANGES | {"invoice.disputed"}


class DisputesOptions(DetectorOptions):
    min_amount: float = Field(1000.0, ge=0, le=1e9,
                              description="disputed amounts below this (limit currency) are ignored")
    warning_share: float = Field(0.2, ge=0.01, le=1.0,
                                 description="disputed amount / exposure that raises a warning")
    critical_share: float = Field(0.5, ge=0.01, le=1.0,
                                  description="disputed amount / exposure that is critical")
    max_severity: MaxSeverity = max_severity_field("info", "a disputed balance")

    def check(self) -> str | None:
        if self.warning_share >= self.critical_share:
            return "warning_share must be below critical_share"
        return None


@register
class Disputes(Detector):
    """How much of what the customer owes is in dispute.

    A customer who disputes a large part of the balance is either unhappy
    with the goods or looking for a reason not to pay; either way that money
    will not come in on time. Warning when 20 % of the exposure is disputed,
    critical from 50 %; disputes under 1,000 are ignored. By default these
    are noted (info, ``max_severity``): healthy customers dispute too, and a
    dispute becomes a credit problem when the money then stays unpaid — which
    ``overdue`` and ``composite`` see.

    >>> from pipeline.builders import register as registered, invoice, make
    >>> from detectors.testing import run_detector
    >>> events = [registered(limit=50000), invoice("I1", 10000), invoice("I2", 10000),
    ...           make("invoice.disputed", "2026-01-20", invoice_id="I2", amount="6000", reason="short delivery")]
    >>> finding = run_detector(Disputes(), events)[0]
    >>> finding.severity, finding.title
    ('info', '30% of the balance is in dispute')
    >>> run_detector(Disputes(Disputes.Options(max_severity="critical")), events)[0].severity
    'warning'
    >>> finding.reasons[0].message
    '6,000.00 EUR of 20,000.00 EUR owed is disputed (30%; warning level 20%)'
    """

    name = "disputes"
    episode = "condition"
    triggers = DISPUTE_CHANGES
    Options = DisputesOptions
    options: DisputesOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        pos = figures(ctx)  # exposure, currency and the open disputes: no whole position needed
        if pos.exposure <= 0 or not pos.any_open_dispute:
            return [], memory  # nothing owed, or nothing in dispute (disputed_amount is 0)
        opts = self.options
        open_disputes, disputed = pos.disputes()
        if pos.exposure <= 0 or disputed <= 0 or disputed < dec(opts.min_amount):
            return [], memory
        share = float(disputed / pos.exposure)
        if share < opts.warning_share:
            return [], memory
        critical = share >= opts.critical_share
        level = opts.critical_share if critical else opts.warning_share
        reasons = [
            Reason("disputed_share",
                   f"{money(disputed, pos.currency)} of {money(pos.exposure, pos.currency)} owed is disputed "
                   f"({pct(share)}; {'critical' if critical else 'warning'} level {pct(level)})",
                   round(share, 4), level),
        ]
        for dispute in sorted(open_disputes, key=lambda d: -d["amount"])[:5]:
            why = f" — {dispute['reason']}" if dispute.get("reason") else ""
            reasons.append(Reason("disputed_invoice",
                                  f"invoice {dispute['invoice_id']}: {money(dispute['amount'], pos.currency)} "
                                  f"disputed since {dispute['opened_at'][:10]}{why}",
                                  float(dispute["amount"])))
        title = f"{pct(share)} of the balance is in dispute"
        return [self.finding(capped("critical" if critical else "warning", opts.max_severity), title, reasons, ctx)], memory
