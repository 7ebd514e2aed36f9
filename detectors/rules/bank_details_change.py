from __future__ import annotations

from detectors.base import register
from detectors.rules._change_followup import FOLLOW_UPS, ChangeFollowUp, ChangeFollowUpOptions


class BankDetailsChangeOptions(ChangeFollowUpOptions):
    pass


@register
class BankDetailsChange(ChangeFollowUp):
    """The customer changed its bank details; escalated when something unusual follows.

    A new bank account alone is routine (info). Within 60 days three signs
    may follow: an invoice of at least 3× the customer's median invoice (or
    one the anomaly model flags), payment at least 15 days later than its
    habit, or another change of bank details. One of them is noted too
    (info: big orders and new accounts are common in healthy customers); two
    are critical. Banks cancel facilities of firms in trouble,
    and a new account followed by a big order is a known fraud pattern.

    >>> from pipeline.builders import register as registered, invoice, make
    >>> from detectors.testing import run_detector
    >>> history = [registered(limit=200000), invoice("I1", 10000, issued_on="2026-01-05"),
    ...            invoice("I2", 12000, issued_on="2026-01-12"), invoice("I3", 11000, issued_on="2026-01-19")]
    >>> change = make("customer.bank_details_changed", "2026-02-01")
    >>> [(f.severity, f.title) for f in run_detector(BankDetailsChange(), [*history, change])]
    [('info', 'Bank details changed on 2026-02-01')]
    >>> finding = run_detector(BankDetailsChange(), [*history, change, invoice("I4", 60000, issued_on="2026-02-10")])[0]
    >>> finding.severity, finding.title
    ('info', 'Bank details changed on 2026-02-01, then an unusually large invoice')
    >>> finding.reasons[1].message
    'Invoice I4 of 60,000.00 EUR issued on 2026-02-10 is 5.5× the usual invoice (median of the 3 invoices before the change: 11,000.00 EUR; unusual from 3×)'
    """

    name = "bank_details_change"
    change_type = "customer.bank_details_changed"
    what = "Bank details changed"
    profile_list = "bank_changes"
    triggers = FOLLOW_UPS | {"customer.bank_details_changed"}
    Options = BankDetailsChangeOptions
    options: BankDetailsChangeOptions
