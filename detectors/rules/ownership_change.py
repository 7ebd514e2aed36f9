from __future__ import annotations

from detectors.base import register
from detectors.rules._change_followup import FOLLOW_UPS, ChangeFollowUp, ChangeFollowUpOptions


class OwnershipChangeOptions(ChangeFollowUpOptions):
    pass


@register
class OwnershipChange(ChangeFollowUp):
    """The customer changed owners; escalated when something unusual follows.

    A new owner alone is noted (info). Within 60 days three signs may
    follow: an invoice of at least 3× the customer's median invoice (or one
    the anomaly model flags), payment at least 15 days later than its habit,
    or another change of owners. One of them is noted too (info); two are
    critical. New owners who order big and pay slowly are the classic
    "long firm" pattern; a takeover can also bring a new payment policy.

    >>> from datetime import date
    >>> from pipeline.builders import register as registered, invoice, payment, make
    >>> from detectors.testing import run_detector
    >>> events = [registered(limit=200000), invoice("I1", 10000, issued_on="2026-01-05"),
    ...           payment("P1", 10000, received_on="2026-02-04", invoice_id="I1"),
    ...           make("customer.ownership_changed", "2026-02-10", description="sold to Holding AG"),
    ...           invoice("I2", 10000, issued_on="2026-02-12")]
    >>> run_detector(OwnershipChange(), events)  # an ordinary invoice after the change: nothing to add
    []
    >>> finding = run_detector(OwnershipChange(), events, today=date(2026, 4, 1))[0]  # I2 is 18 days late
    >>> finding.severity, finding.title
    ('info', 'Ownership changed on 2026-02-10, then slower payment')
    """

    name = "ownership_change"
    change_type = "customer.ownership_changed"
    what = "Ownership changed"
    profile_list = "ownership_changes"
    triggers = FOLLOW_UPS | {"customer.ownership_changed"}
    Options = OwnershipChangeOptions
    options: OwnershipChangeOptions
