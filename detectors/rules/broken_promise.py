from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, pct, register
from detectors.rules._common import figures, in_limit_currency

#: The clock (a promise date passing) and everything that settles or unsettles invoices.
PROMISE_CHANGES = frozenset({
    "tick", "payment.promised", "payment.received", "payment.reversed", "invoice.issued", "invoice.adjusted",
    "invoice.dispute_resolved", "invoice.written_off",
})


class BrokenPromiseOptions(DetectorOptions):
    warning_count: int = Field(3, ge=1, le=20,
                               description="this many broken promises still unpaid is a warning (fewer are noted: info)")
    critical_count: int = Field(3, ge=1, le=20, description="this many broken promises still unpaid is critical")
    critical_share_of_limit: float = Field(
        0.5, ge=0.01, le=10.0, description="unpaid broken promises adding up to this share of the credit limit are critical")
    lookback_days: int = Field(120, ge=1, le=730,
                               description="promises whose date passed longer ago than this no longer count")

    def check(self) -> str | None:
        if self.warning_count > self.critical_count:
            return "warning_count must not be above critical_count"
        return None


@register
class BrokenPromise(Detector):
    """The customer promised to pay by a date and did not.

    A promise to pay is what a collector gets on the phone; breaking it is
    one of the surest signs that cash is short. The finding holds while the
    promised money is still unpaid (a late payment ends it; a bounced one
    brings it back). One or two broken promises are noted (info: a payment
    run that slipped is common); three within 120 days, or unpaid promised
    amounts of half the credit limit, are critical.

    It runs on the clock, so it fires on the first day after the promised
    date (plus the ledger's grace days) even if the customer sends nothing.

    >>> from datetime import date
    >>> from pipeline.builders import register as registered, invoice, make
    >>> from detectors.testing import run_detector
    >>> events = [registered(limit=50000), invoice("I1", 8000),
    ...           make("payment.promised", "2026-02-20", invoice_id="I1", amount="8000", promised_on="2026-02-27")]
    >>> run_detector(BrokenPromise(), events, today=date(2026, 2, 27))  # the promised day itself: still in time
    []
    >>> finding = run_detector(BrokenPromise(), events, today=date(2026, 2, 28))[0]
    >>> finding.severity, finding.title
    ('info', 'Promise to pay 8,000.00 EUR by 2026-02-27 broken')
    """

    name = "broken_promise"
    episode = "condition"
    triggers = PROMISE_CHANGES
    Options = BrokenPromiseOptions
    options: BrokenPromiseOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        if not ctx.ledger.promises or not figures(ctx).promise_deadline_passed:
            return [], memory  # no promise, or none whose day has passed: none can be broken
        pos = figures(ctx)  # broken promises, open invoices, limit and currency: no whole position needed
        if not pos.promises_broken:
            return [], memory
        opts = self.options
        horizon = ctx.today - timedelta(days=opts.lookback_days)
        unpaid = [p for p in pos.promises_broken if p["promised_on"] >= horizon and self._still_unpaid(ctx, p)]
        if not unpaid:
            return [], memory
        currency = pos.currency
        total = sum((p["amount"] for p in unpaid), Decimal(0))  # promises carry no currency: the limit currency
        reasons = []
        for promise in unpaid[:5]:
            days = (ctx.today - promise["promised_on"]).days
            about = f" for invoice {promise['invoice_id']}" if promise["invoice_id"] else ""
            reasons.append(Reason("promise_broken",
                                  f"Promised {money(promise['amount'], currency)}{about} by "
                                  f"{promise['promised_on'].isoformat()}; {days} day{'s' if days != 1 else ''} later "
                                  f"it is still unpaid",
                                  float(promise["amount"])))
        severity = "warning" if len(unpaid) >= opts.warning_count else "info"
        if len(unpaid) >= opts.critical_count:
            severity = "critical"
            reasons.append(Reason("promises_broken_count",
                                  f"{len(unpaid)} promises broken (critical from {opts.critical_count})",
                                  float(len(unpaid)), float(opts.critical_count)))
        if pos.credit_limit:
            share = float(total / pos.credit_limit)
            if share >= opts.critical_share_of_limit:
                severity = "critical"
                reasons.append(Reason("promised_share_of_limit",
                                      f"the broken promises add up to {money(total, currency)}, {pct(share)} of the "
                                      f"credit limit (critical from {pct(opts.critical_share_of_limit)})",
                                      float(total), float(pos.credit_limit) * opts.critical_share_of_limit))
        if len(unpaid) == 1:
            title = f"Promise to pay {money(unpaid[0]['amount'], currency)} by {unpaid[0]['promised_on'].isoformat()} broken"
        else:
            title = f"{len(unpaid)} promises to pay broken ({money(total, currency)})"
        evidence = tuple(p["event_id"] for p in unpaid[:10])
        return [self.finding(severity, title, reasons, ctx, evidence)], memory

    @staticmethod
    def _still_unpaid(ctx: DetectionContext, promise: dict[str, Any]) -> bool:
        """Broken and not made good since: its invoice is still open and the promised cash has not come."""
        invoice_id = promise["invoice_id"]
        quick = figures(ctx)
        if invoice_id is not None:
            invoice = ctx.ledger.invoices.get(invoice_id)
            if invoice is not None and invoice.issued and not quick.is_open(invoice_id):
                return False  # settled (late) or credited
        made = ctx.ledger.promises[promise["event_id"]].made_on
        paid = Decimal(0)
        for amount, currency, paid_invoice in quick.cash_received_since(made):  # the payments that count
            if invoice_id is None or paid_invoice in (None, invoice_id):
                paid += in_limit_currency(ctx, amount, currency)
        return paid < promise["amount"]
