from __future__ import annotations

from typing import Any

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money, pct, register
from detectors.rules._common import dec, figures
from detectors.rules._grading import MaxSeverity, capped, max_severity_field
from detectors.rules.credit_limit import EXPOSURE_CHANGES


class InsuranceCoverOptions(DetectorOptions):
    min_uncovered: float = Field(1000.0, ge=0, le=1e9,
                                 description="uncovered amounts below this (limit currency) are ignored")
    critical_uncovered_share: float = Field(
        0.5, ge=0.01, le=1.0, description="share of the exposure without cover that is critical")
    max_severity: MaxSeverity = max_severity_field("info", "exposure beyond the insurance cover")


@register
class InsuranceCover(Detector):
    """What the customer owes beyond its credit insurance cover.

    With trade credit insurance, only the insured limit is paid out if the
    customer fails; the rest is the company's own loss. An insurer that cuts
    or withdraws cover often knows something (it sees many suppliers).

    * critical: cover withdrawn (insured limit 0) while money is owed, or at
      least half of the exposure uncovered;
    * warning: the exposure exceeds the insured limit by 1,000 or more;
    * info: cover withdrawn while nothing is owed (future sales are uninsured).

    By default capped to a note (info, ``max_severity``): exposure beyond the
    cover is an order-release question like the credit limit, and an insurer's
    cut counts for ``composite`` and for ``credit_limit_review``.

    Customers without an insured limit on record are not watched.

    >>> from pipeline.builders import register as registered, invoice, make
    >>> from detectors.testing import run_detector
    >>> events = [registered(limit=50000), make("customer.insurance_limit_changed", "2026-01-02", insured_limit="40000"),
    ...           invoice("I1", 45000)]
    >>> finding = run_detector(InsuranceCover(), events)[0]
    >>> finding.severity, finding.title
    ('info', '5,000.00 EUR owed beyond the credit insurance cover')
    >>> events.append(make("customer.insurance_limit_changed", "2026-01-20", insured_limit="0"))
    >>> run_detector(InsuranceCover(), events)[0].title
    'Credit insurance withdrawn with 45,000.00 EUR owed'
    """

    name = "insurance_cover"
    episode = "condition"
    triggers = EXPOSURE_CHANGES | {"customer.insurance_limit_changed"}
    Options = InsuranceCoverOptions
    options: InsuranceCoverOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        insured = ctx.ledger.profile.insured_limit  # the position's insured_limit
        if insured is None:
            return [], memory
        pos = figures(ctx)  # exposure, insured limit and currency only: no whole position needed
        opts = self.options
        exposure = max(pos.exposure, dec(0))
        uncovered = exposure - insured
        currency = pos.currency
        if insured == 0:
            if exposure < dec(opts.min_uncovered):
                reason = Reason("insurance_withdrawn",
                                f"The insurer withdrew cover; nothing significant is owed now "
                                f"({money(exposure, currency)}), but further sales on credit are uninsured",
                                float(exposure), opts.min_uncovered)
                return [self.finding("info", "Credit insurance withdrawn", [reason], ctx)], memory
            reason = Reason("insurance_withdrawn",
                            f"The insurer withdrew cover: all {money(exposure, currency)} owed is uninsured",
                            float(exposure), 0.0)
            return [self.finding(capped("critical", opts.max_severity),
                                 f"Credit insurance withdrawn with {money(exposure, currency)} owed",
                                 [reason], ctx)], memory
        if uncovered < dec(opts.min_uncovered) or uncovered <= 0:
            return [], memory
        share = float(uncovered / exposure)
        critical = share >= opts.critical_uncovered_share
        reasons = [
            Reason("exposure_over_insured_limit",
                   f"Exposure {money(exposure, currency)} is above the insured limit {money(insured, currency)}: "
                   f"{money(uncovered, currency)} ({pct(share)}) is uninsured",
                   float(exposure), float(insured)),
        ]
        if critical:
            reasons.append(Reason("uninsured_share",
                                  f"{pct(share)} of the exposure is uninsured (critical from "
                                  f"{pct(opts.critical_uncovered_share)})",
                                  round(share, 4), opts.critical_uncovered_share))
        title = f"{money(uncovered, currency)} owed beyond the credit insurance cover"
        return [self.finding(capped("critical" if critical else "warning", opts.max_severity), title, reasons, ctx)], memory
