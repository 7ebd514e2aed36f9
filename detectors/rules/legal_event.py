from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, register
from detectors.rules._common import figures

LegalSeverity = Literal["info", "warning", "critical"]

_WHAT = {
    "insolvency_filing": "Insolvency filing",
    "liquidation": "Liquidation",
    "court_judgment": "Court judgment",
    "other": "Legal event",
}


class LegalEventOptions(DetectorOptions):
    insolvency_filing: LegalSeverity = Field("critical", description="severity of an insolvency filing")
    liquidation: LegalSeverity = Field("critical", description="severity of a liquidation")
    court_judgment: LegalSeverity = Field("warning", description="severity of a court judgment against the customer")
    other: LegalSeverity = Field("info", description="severity of any other legal event")


@register
class LegalEvent(Detector):
    """A legal event about the customer: insolvency, liquidation, a court judgment.

    An insolvency filing or a liquidation means the open balance will at
    best be paid as a quota in the proceedings: critical. A court judgment
    (typically another creditor suing for payment) is a warning; anything
    else is noted (info). The severities can be set per kind.

    >>> from pipeline.builders import register as registered, invoice
    >>> from detectors.testing import event, run_detector
    >>> events = [registered(), invoice("I1", 20000),
    ...           event("customer.legal_event", "2026-02-01", kind="insolvency_filing", description="filed at Hamburg court")]
    >>> finding = run_detector(LegalEvent(), events)[0]
    >>> finding.severity, finding.title
    ('critical', 'Insolvency filing: filed at Hamburg court')
    >>> finding.reasons[1].message
    '20,000.00 EUR is owed by the customer now'
    """

    name = "legal_event"
    episode = "event"
    triggers = frozenset({"customer.legal_event"})
    Options = LegalEventOptions
    options: LegalEventOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        kind = getattr(ctx.event, "kind", None)
        if kind is None:
            return [], memory
        description = getattr(ctx.event, "description", None)
        severity: LegalSeverity = getattr(self.options, kind, self.options.other)
        what = _WHAT.get(kind, "Legal event")
        detail = f": {description}" if description else ""
        day = ctx.event.occurred_at.date().isoformat()  # type: ignore[union-attr]
        reasons = [Reason(f"legal_{kind}", f"{what} reported on {day}{detail}")]
        pos = figures(ctx)
        if pos.exposure > 0:
            reasons.append(Reason("exposure_at_risk", f"{money(pos.exposure, pos.currency)} is owed by the customer now",
                                  float(pos.exposure)))
        return [self.finding(severity, f"{what}{detail}", reasons, ctx)], memory
