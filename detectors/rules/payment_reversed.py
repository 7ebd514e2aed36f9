from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, pct, register
from detectors.rules._common import dec, figures, in_limit_currency, stamp_day
from detectors.rules._grading import MaxSeverity, capped, max_severity_field
from pipeline.ledger import Payment


class PaymentReversedOptions(DetectorOptions):
    min_amount: float = Field(100.0, ge=0, le=1e9,
                              description="reversals below this (limit currency) are only noted (info)")
    critical_share_of_exposure: float = Field(
        0.25, ge=0.01, le=10.0,
        description="reversed amount, as a share of what the customer owes afterwards, that is critical")
    repeat_window_days: int = Field(90, ge=1, le=730,
                                    description="a second reversal within this many days is critical")
    max_severity: MaxSeverity = max_severity_field("info", "a reversed payment")


@register
class PaymentReversed(Detector):
    """A payment that had been received was reversed: it bounced or was charged back.

    The money the customer seemed to have paid is owed again, and a payment
    that bounces says the account had no funds. Warning for any reversal;
    critical when the reversed amount is at least 25 % of what the customer
    owes afterwards, or when it is the second reversal within 90 days.
    Reversals under 100 are only noted (info). By default every reversal is
    noted (info, ``max_severity``): one bounce is often a bank or mandate
    error; with other signs it counts for ``composite``.

    A reversal that arrives before its payment is held by the ledger; the
    finding comes when the payment arrives (the reversal then takes effect).

    >>> from pipeline.builders import register as registered, invoice, payment, make
    >>> from detectors.testing import run_detector
    >>> events = [registered(limit=100000), invoice("I1", 10000), invoice("I2", 50000),
    ...           payment("P1", 10000, received_on="2026-02-05", invoice_id="I1"),
    ...           make("payment.reversed", "2026-02-07", payment_id="P1", reason="bounced")]
    >>> finding = run_detector(PaymentReversed(), events)[0]
    >>> finding.severity, finding.title
    ('info', 'Payment P1 of 10,000.00 EUR reversed (bounced)')
    >>> run_detector(PaymentReversed(PaymentReversed.Options(max_severity="critical")), events)[0].severity
    'warning'
    >>> finding.reasons[0].message
    'Payment P1 of 10,000.00 EUR received on 2026-02-05 was reversed on 2026-02-07: bounced'
    """

    name = "payment_reversed"
    episode = "event"
    triggers = frozenset({"payment.reversed", "payment.received"})
    Options = PaymentReversedOptions
    options: PaymentReversedOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        event = ctx.event
        payment_id = getattr(event, "payment_id", None)
        if payment_id is None:
            return [], memory
        payment = ctx.ledger.payments.get(payment_id)
        if payment is None or payment.receipt is None or payment.reversal is None:
            return [], memory  # not received yet (the reversal is held), or not reversed
        opts = self.options
        pos = figures(ctx)  # exposure and currency only
        _, receipt_event, amount, currency, received_on, _ = payment.receipt
        reversed_at, reversal_event, why = payment.reversal
        reversed_amount = in_limit_currency(ctx, amount, currency)
        why_text = why or "no reason given"
        reasons = [
            Reason("payment_reversed",
                   f"Payment {payment_id} of {money(amount, currency)} received on {received_on.isoformat()} "
                   f"was reversed on {stamp_day(reversed_at).isoformat()}: {why_text}",
                   float(reversed_amount), opts.min_amount),
        ]
        if reversed_amount < dec(opts.min_amount):
            return [self.finding("info", f"Small payment {payment_id} reversed ({why_text})", reasons, ctx,
                                 (receipt_event, reversal_event))], memory
        severity = "warning"
        if pos.exposure > 0:
            share = float(reversed_amount / pos.exposure)
            if share >= opts.critical_share_of_exposure:
                severity = "critical"
                reasons.append(Reason("reversed_share_of_exposure",
                                      f"the reversed amount is {pct(share)} of the {money(pos.exposure, pos.currency)} "
                                      f"now owed (critical from {pct(opts.critical_share_of_exposure)})",
                                      round(share, 4), opts.critical_share_of_exposure))
        others = self._earlier_reversals(ctx, payment)
        if others:
            severity = "critical"
            listed = ", ".join(f"{p.payment_id} on {stamp_day(p.reversal[0]).isoformat()}" for p in others)  # type: ignore[index]
            reasons.append(Reason("repeated_reversal",
                                  f"{len(others) + 1} payments reversed within {opts.repeat_window_days} days "
                                  f"(also {listed})",
                                  float(len(others) + 1), 2.0))
        title = f"Payment {payment_id} of {money(amount, currency)} reversed ({why_text})"
        return [self.finding(capped(severity, opts.max_severity), title, reasons, ctx,
                             (receipt_event, reversal_event))], memory

    def _earlier_reversals(self, ctx: DetectionContext, payment: Payment) -> list[Payment]:
        """Other received-and-reversed payments in the window before (or on the day of) this reversal."""
        day = stamp_day(payment.reversal[0])  # type: ignore[index]
        start = day - timedelta(days=self.options.repeat_window_days)
        found = []
        for other in ctx.ledger.payments.values():
            if other.payment_id == payment.payment_id or other.receipt is None or other.reversal is None:
                continue
            if start <= stamp_day(other.reversal[0]) <= day:
                found.append(other)
        return sorted(found, key=lambda p: (p.reversal[0], p.payment_id))  # type: ignore[index]
