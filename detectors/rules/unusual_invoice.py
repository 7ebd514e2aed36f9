"""An invoice far larger than what this customer is usually invoiced."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, register
from detectors.rules._grading import MaxSeverity, capped, max_severity_field


class UnusualInvoiceOptions(DetectorOptions):
    anomaly_threshold: float = Field(0.95, ge=0.5, le=1.0,
                                     description="invoice anomaly score (0..1) from which an invoice counts as unusual")
    min_amount: float = Field(0.0, ge=0.0, le=1e12,
                              description="invoices below this amount (base currency) are never reported")
    max_severity: MaxSeverity = max_severity_field("info", "an unusual invoice")


@register
class UnusualInvoice(Detector):
    """An invoice unusually large for this customer (the models' invoice anomaly score).

    The score compares the invoice with the customer's own invoices on a log
    scale (``pipeline.models``): ``z²/(1+z²)`` for an invoice ``z`` standard
    deviations above the customer's mean, so 0.95 means more than 4.4
    standard deviations — by Cantelli's inequality at most 5 % of any
    customer's invoices can be that far above its mean. Reported once with
    the amount against the customer's typical (median) invoice: a warning
    with ``max_severity = "warning"``, by default noted (info) — a big order
    alone is usually good news; after a change of owners or bank it is what
    ``ownership_change`` and ``bank_details_change`` escalate.

    >>> from pipeline.builders import register as registered, invoice
    >>> from detectors.base import ModelSignals
    >>> from detectors.testing import run_detector
    >>> history = [invoice(f"I{n}", 1000 + 10 * n) for n in range(8)]
    >>> events = [registered(), *history, invoice("I9", 10000)]
    >>> findings = run_detector(UnusualInvoice(), events, signals=ModelSignals(invoice_anomaly=0.998))
    >>> findings[0].severity, findings[0].title
    ('info', 'Invoice I9 of 10,000.00 EUR, 9.7× the usual amount')
    >>> findings[0].reasons[1].message
    'Invoice I9: 10,000.00 EUR; typical (median of 8 other invoices) 1,035.00 EUR'
    >>> findings[0].score
    0.998
    >>> run_detector(UnusualInvoice(), events, signals=ModelSignals(invoice_anomaly=0.7))
    []
    """

    name = "unusual_invoice"
    episode = "event"
    triggers = frozenset({"invoice.issued"})
    Options = UnusualInvoiceOptions
    options: UnusualInvoiceOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        score = ctx.models.invoice_anomaly
        event = ctx.event
        if score is None or score < self.options.anomaly_threshold or event is None:
            return [], memory
        from pipeline.ledger import DEFAULT_CONFIG, to_base

        config = ctx.ledger_config or DEFAULT_CONFIG
        invoice_id = event.invoice_id  # type: ignore[attr-defined]
        amount = to_base(event.amount, event.currency, config)  # type: ignore[attr-defined]
        if amount < Decimal(str(self.options.min_amount)):
            return [], memory
        others = sorted(
            to_base(inv.amount, inv.currency, config)
            for inv in ctx.ledger.invoices.values()
            if inv.issue is not None and inv.invoice_id != invoice_id
        )
        currency = config.base_currency
        reasons = [
            Reason("invoice_anomaly",
                   f"Anomaly score {score:.3f} against this customer's own invoices "
                   f"(unusual from {self.options.anomaly_threshold:.2f})",
                   float(score), self.options.anomaly_threshold),
        ]
        if others:
            middle = len(others) // 2
            typical = others[middle] if len(others) % 2 else (others[middle - 1] + others[middle]) / 2
            ratio = float(amount / typical) if typical > 0 else None
            reasons.append(Reason(
                "amount_vs_typical",
                f"Invoice {invoice_id}: {money(amount, currency)}; typical (median of {len(others)} other invoices) "
                f"{money(typical, currency)}",
                float(amount), float(typical),
            ))
            title = (f"Invoice {invoice_id} of {money(amount, currency)}, {ratio:.1f}× the usual amount"
                     if ratio else f"Unusual invoice {invoice_id} of {money(amount, currency)}")
        else:
            title = f"Unusual invoice {invoice_id} of {money(amount, currency)}"
        return [self.finding(capped("warning", self.options.max_severity), title, reasons, ctx, (f"invoice:{invoice_id}",),
                             score=float(score))], memory
