"""What each rule detector finds, at and around its thresholds, and what the engine makes of the example portfolio."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import pytest

from detectors.base import SEVERITY_RANK, ModelSignals
from detectors.config import ThresholdError, parse_thresholds
from detectors.rules.bank_details_change import BankDetailsChange
from detectors.rules.broken_promise import BrokenPromise
from detectors.rules.composite import Composite
from detectors.rules.credit_limit import CreditLimit
from detectors.rules.credit_limit_review import CreditLimitReview
from detectors.rules.disputes import Disputes
from detectors.rules.insurance_cover import InsuranceCover
from detectors.rules.legal_event import LegalEvent
from detectors.rules.overdue import Overdue
from detectors.rules.ownership_change import OwnershipChange
from detectors.rules.payment_habit import PaymentHabit
from detectors.rules.payment_reversed import PaymentReversed
from detectors.rules.risk_score import RiskScore
from detectors.rules.unusual_invoice import UnusualInvoice
from detectors.rules.rating_downgrade import RatingDowngrade, notch
from detectors.testing import event, run_detector
from pipeline.builders import invoice, payment
from pipeline.builders import register as registered
from pipeline.engine import NoModels, RiskEngine
from pipeline.events import parse_event

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "events.jsonl"  # = /work/shared/examples/events.jsonl


def severities(findings):
    return [f.severity for f in findings]


def codes(finding):
    return [r.code for r in finding.reasons]


def graded(cls, **options):
    """The detector with its full grading (``max_severity = "critical"`` where it has one): the tests of each
    detector's levels below use it; ``TestDefaultGrading`` checks what the defaults make of them."""
    full = {"max_severity": "critical"} if "max_severity" in cls.Options.model_fields else {}
    return cls(cls.Options(**{**full, **options}))


def dispute(invoice_id, amount=None, day="2026-01-25", reason="damaged goods"):
    fields = {"invoice_id": invoice_id, "reason": reason}
    if amount is not None:
        fields["amount"] = str(amount)
    return event("invoice.disputed", day, **fields)


def reversal(payment_id, day, reason="bounced"):
    return event("payment.reversed", day, payment_id=payment_id, reason=reason)


def promise(invoice_id, amount, promised_on, day="2026-02-20"):
    fields = {"amount": str(amount), "promised_on": promised_on}
    if invoice_id:
        fields["invoice_id"] = invoice_id
    return event("payment.promised", day, **fields)


def rating(day, grade, pd=None, agency="S&P"):
    return event("customer.rating_changed", day, agency=agency, rating=grade, probability_of_default=pd)


def insured(day, amount):
    return event("customer.insurance_limit_changed", day, insured_limit=str(amount))


def legal(day, kind, description=None):
    return event("customer.legal_event", day, kind=kind, description=description)


# --- disputes ------------------------------------------------------------------------


class TestDisputes:
    base = [registered(limit=100000), invoice("I1", 8000), invoice("I2", 2000)]

    def test_a_fifth_of_the_balance_in_dispute_is_a_warning(self):
        findings = run_detector(graded(Disputes), [*self.base, dispute("I1", 2000)])
        assert severities(findings) == ["warning"]
        assert findings[0].reasons[0].value == 0.2 and findings[0].reasons[0].threshold == 0.2
        assert "damaged goods" in findings[0].reasons[1].message

    def test_just_under_a_fifth_is_not_reported(self):
        assert run_detector(graded(Disputes), [*self.base, dispute("I1", "1999.99")]) == []

    def test_half_the_balance_in_dispute_is_critical(self):
        findings = run_detector(graded(Disputes), [*self.base, dispute("I1", 5000)])
        assert severities(findings) == ["critical"]

    def test_a_dispute_without_amount_covers_what_is_open_on_the_invoice(self):
        findings = run_detector(graded(Disputes), [*self.base, dispute("I1")])
        assert severities(findings) == ["critical"]
        assert "8,000.00 EUR of 10,000.00 EUR" in findings[0].reasons[0].message

    def test_small_disputes_are_ignored_whatever_their_share(self):
        events = [registered(limit=100000), invoice("I1", 900), dispute("I1")]
        assert run_detector(graded(Disputes), events) == []
        assert severities(run_detector(graded(Disputes, min_amount=0), events)) == ["critical"]

    def test_a_resolved_dispute_ends_it(self):
        resolved = event("invoice.dispute_resolved", "2026-01-30", invoice_id="I1", credited_amount="0")
        assert run_detector(graded(Disputes), [*self.base, dispute("I1", 5000), resolved]) == []

    def test_the_share_moves_with_the_exposure(self):
        # 1,800 of 10,000 disputed is not yet a warning; once the undisputed I2 is paid it is 1,800 of 8,000.
        events = [*self.base, dispute("I1", 1800)]
        assert run_detector(graded(Disputes), events) == []
        paid = payment("P1", 2000, received_on="2026-02-01", invoice_id="I2")
        assert severities(run_detector(graded(Disputes), [*events, paid])) == ["warning"]

    def test_warning_share_must_be_below_critical_share(self):
        with pytest.raises(ThresholdError, match=r"\[disputes\] warning_share must be below critical_share"):
            parse_thresholds({"disputes": {"warning_share": 0.6}})


# --- payment_reversed ---------------------------------------------------------------------


class TestPaymentReversed:
    base = [registered(limit=100000), invoice("I1", 10000), invoice("I2", 50000),
            payment("P1", 10000, received_on="2026-02-05", invoice_id="I1")]

    def test_a_bounced_payment_is_a_warning_naming_payment_amount_and_reason(self):
        bounce = reversal("P1", "2026-02-07", "bounced")
        findings = run_detector(graded(PaymentReversed), [*self.base, bounce])
        assert severities(findings) == ["warning"]
        message = findings[0].reasons[0].message
        assert "P1" in message and "10,000.00 EUR" in message and "bounced" in message
        assert set(findings[0].event_ids) == {bounce.event_id, self.base[-1].event_id}  # the reversal, the payment

    def test_a_reversal_of_a_quarter_of_what_is_owed_is_critical(self):
        events = [registered(limit=100000), invoice("I1", 10000), invoice("I2", 30000),
                  payment("P1", 10000, received_on="2026-02-05", invoice_id="I1"), reversal("P1", "2026-02-07")]
        finding = run_detector(graded(PaymentReversed), events)[0]
        assert finding.severity == "critical"  # 10,000 of 40,000 = 25 %
        assert "reversed_share_of_exposure" in codes(finding)

    def test_a_second_reversal_within_90_days_is_critical(self):
        events = [*self.base, payment("P2", 2000, received_on="2026-02-10"), reversal("P2", "2026-02-12"),
                  payment("P3", 2000, received_on="2026-05-01"), reversal("P3", "2026-05-12", "chargeback")]
        finding = run_detector(graded(PaymentReversed), events)[0]
        assert finding.severity == "critical"
        assert "repeated_reversal" in codes(finding)

    def test_a_reversal_more_than_90_days_after_the_last_is_a_warning_again(self):
        events = [*self.base, payment("P2", 2000, received_on="2026-02-10"), reversal("P2", "2026-02-12"),
                  payment("P3", 2000, received_on="2026-05-01"), reversal("P3", "2026-05-14")]
        assert severities(run_detector(graded(PaymentReversed), events)) == ["warning"]

    def test_a_reversal_of_an_unknown_payment_waits_for_the_payment(self):
        early = [registered(limit=100000), invoice("I1", 10000), invoice("I2", 50000), reversal("P1", "2026-02-07")]
        assert run_detector(graded(PaymentReversed), early) == []
        late_payment = payment("P1", 10000, received_on="2026-02-05", invoice_id="I1")
        assert severities(run_detector(graded(PaymentReversed), [*early, late_payment])) == ["warning"]

    def test_an_ordinary_payment_is_not_a_finding(self):
        assert run_detector(graded(PaymentReversed), self.base) == []

    def test_a_tiny_reversal_is_only_noted(self):
        events = [*self.base, payment("P2", 50, received_on="2026-02-10"), reversal("P2", "2026-02-12", "chargeback")]
        assert severities(run_detector(graded(PaymentReversed), events)) == ["info"]


# --- broken_promise -----------------------------------------------------------------------


class TestBrokenPromise:
    base = [registered(limit=50000), invoice("I1", 8000), invoice("I2", 6000)]

    def test_fires_on_the_day_after_the_promised_date_without_any_event(self):
        events = [*self.base, promise("I1", 8000, "2026-02-27")]
        assert run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 2, 27)) == []
        finding = run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 2, 28))[0]
        assert finding.severity == "warning"
        assert "I1" in finding.reasons[0].message and "2026-02-27" in finding.reasons[0].message

    def test_a_kept_promise_is_not_reported(self):
        events = [*self.base, promise("I1", 8000, "2026-02-27"),
                  payment("P1", 8000, received_on="2026-02-26", invoice_id="I1")]
        assert run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 3, 5)) == []

    def test_paying_late_ends_it_and_a_bounce_brings_it_back(self):
        events = [*self.base, promise("I1", 8000, "2026-02-27"),
                  payment("P1", 8000, received_on="2026-03-02", invoice_id="I1")]
        assert run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events) == []
        assert severities(run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), [*events, reversal("P1", "2026-03-04")])) == ["warning"]

    def test_paying_the_promised_part_of_an_invoice_late_ends_it(self):
        events = [*self.base, promise("I1", 5000, "2026-02-27"),
                  payment("P1", 5000, received_on="2026-03-02", invoice_id="I1")]
        assert run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events[:-1], today=date(2026, 3, 1))[0].severity == "warning"
        assert run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events) == []  # I1 still has 3,000 open, but the 5,000 came

    def test_a_promise_without_invoice_is_made_good_by_enough_cash(self):
        events = [*self.base, promise(None, 5000, "2026-02-27")]
        assert severities(run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 3, 1))) == ["warning"]
        late = payment("P1", 5000, received_on="2026-03-03")
        assert run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), [*events, late]) == []

    def test_two_broken_promises_are_critical(self):
        events = [*self.base, promise("I1", 8000, "2026-02-27"), promise("I2", 6000, "2026-02-27")]
        finding = run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 2, 28))[0]
        assert finding.severity == "critical" and "promises_broken_count" in codes(finding)

    def test_a_broken_promise_of_half_the_limit_is_critical(self):
        events = [registered(limit=50000), invoice("I1", 25000), promise("I1", 25000, "2026-02-27")]
        assert severities(run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 2, 28))) == ["critical"]
        events = [registered(limit=50000), invoice("I1", 25000), promise("I1", "24999.99", "2026-02-27")]
        assert severities(run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 2, 28))) == ["warning"]

    def test_old_broken_promises_stop_counting_after_the_lookback(self):
        events = [*self.base, promise("I1", 8000, "2026-02-27")]
        assert run_detector(graded(BrokenPromise, warning_count=1, critical_count=2), events, today=date(2026, 2, 27) + timedelta(days=121)) == []


# --- rating_downgrade ---------------------------------------------------------------------


class TestRatingDowngrade:
    def judge(self, *ratings, **options):
        detector = RatingDowngrade(RatingDowngrade.Options(**options)) if options else RatingDowngrade()
        return run_detector(detector, [registered(), *ratings])

    @pytest.mark.parametrize(("before", "after", "severity"), [
        ("A", "A-", "info"),        # 1 notch
        ("A", "BBB+", "warning"),   # 2 notches: warning_notches
        ("A", "BBB", "critical"),   # 3 notches: critical_notches
        ("BBB-", "BB+", "warning"),  # 1 notch, but out of investment grade
        ("B", "B-", "warning"),      # 1 notch, but reaches B-
        ("B", "CCC+", "critical"),   # distressed
        ("B-", "D", "critical"),     # default
        ("Baa1", "Baa3", "warning"),  # Moody's, 2 notches
    ])
    def test_notches_on_the_same_agency_scale(self, before, after, severity):
        findings = self.judge(rating("2026-01-02", before), rating("2026-03-01", after))
        assert severities(findings) == [severity]

    def test_upgrades_and_reaffirmations_are_not_reported(self):
        assert self.judge(rating("2026-01-02", "BB"), rating("2026-03-01", "BB+")) == []
        assert self.judge(rating("2026-01-02", "CCC"), rating("2026-03-01", "CCC")) == []

    def test_only_the_same_agency_is_compared(self):
        findings = self.judge(rating("2026-01-02", "A", agency="S&P"), rating("2026-03-01", "BB", agency="Fitch"))
        assert findings == []  # Fitch's first rating, BB: not a downgrade, not a worrying level

    def test_the_warning_notches_are_configurable(self):
        changes = (rating("2026-01-02", "A"), rating("2026-03-01", "A-"))
        assert severities(self.judge(*changes, warning_notches=1)) == ["warning"]

    def test_a_pd_jump_of_five_points_is_critical(self):
        findings = self.judge(rating("2026-01-02", "BB", "0.01"), rating("2026-03-01", "BB", "0.06"))
        assert severities(findings) == ["critical"]
        assert "pd_jump" in codes(findings[0])

    def test_unknown_scales_are_compared_by_pd(self):
        findings = self.judge(rating("2026-01-02", "3", "0.010", agency="Bureau"),
                              rating("2026-03-01", "4", "0.035", agency="Bureau"))
        assert severities(findings) == ["warning"]
        assert self.judge(rating("2026-01-02", "3", "0.02", agency="Bureau"),
                          rating("2026-03-01", "2", "0.01", agency="Bureau")) == []

    def test_an_unknown_scale_without_pd_is_only_noted(self):
        findings = self.judge(rating("2026-01-02", "2A2", agency="D&B"), rating("2026-03-01", "3A3", agency="D&B"))
        assert severities(findings) == ["info"]

    def test_a_first_rating_counts_by_its_level(self):
        assert severities(self.judge(rating("2026-03-01", "B-", "0.08"))) == ["warning"]
        assert severities(self.judge(rating("2026-03-01", "BB", "0.12"))) == ["critical"]
        assert self.judge(rating("2026-03-01", "BBB", "0.002")) == []

    def test_an_old_rating_arriving_after_a_newer_one_is_ignored(self):
        events = [registered(), rating("2026-01-02", "A"), rating("2026-03-01", "A"), rating("2026-02-01", "BB")]
        assert run_detector(RatingDowngrade(), events) == []

    def test_scale(self):
        assert [notch(r) for r in ("AAA", "BBB-", "BB+", "CCC+", "Caa1", "SD", "NR")] == [0, 9, 10, 16, 16, 21, None]


# --- insurance_cover ----------------------------------------------------------------------


class TestInsuranceCover:
    def test_cover_withdrawn_while_money_is_owed_is_critical(self):
        findings = run_detector(graded(InsuranceCover), [registered(), insured("2026-01-02", 30000), invoice("I1", 20000),
                                                   insured("2026-01-20", 0)])
        assert severities(findings) == ["critical"]
        assert findings[0].reasons[0].value == 20000.0

    def test_cover_withdrawn_with_nothing_owed_is_a_note(self):
        assert severities(run_detector(graded(InsuranceCover), [registered(), insured("2026-01-20", 0)])) == ["info"]

    def test_exposure_above_the_insured_limit_is_a_warning_with_the_uncovered_amount(self):
        events = [registered(), insured("2026-01-02", 15000), invoice("I1", 20000)]
        finding = run_detector(graded(InsuranceCover), events)[0]
        assert finding.severity == "warning"
        assert "5,000.00 EUR (25%) is uninsured" in finding.reasons[0].message
        assert (finding.reasons[0].value, finding.reasons[0].threshold) == (20000.0, 15000.0)

    def test_half_the_exposure_uncovered_is_critical(self):
        events = [registered(), insured("2026-01-02", 10000), invoice("I1", 20000)]
        assert severities(run_detector(graded(InsuranceCover), events)) == ["critical"]

    def test_less_than_1000_uncovered_is_ignored(self):
        events = [registered(), insured("2026-01-02", 19001), invoice("I1", 20000)]
        assert run_detector(graded(InsuranceCover), events) == []

    def test_customers_without_insurance_on_record_are_not_watched(self):
        assert run_detector(graded(InsuranceCover), [registered(), invoice("I1", 20000)]) == []

    def test_runs_on_exposure_changes_as_well_as_insurance_changes(self):
        assert {"invoice.issued", "payment.reversed", "customer.insurance_limit_changed"} <= InsuranceCover.triggers


# --- legal_event --------------------------------------------------------------------------


class TestLegalEvent:
    @pytest.mark.parametrize(("kind", "severity"), [
        ("insolvency_filing", "critical"), ("liquidation", "critical"), ("court_judgment", "warning"), ("other", "info"),
    ])
    def test_severity_by_kind(self, kind, severity):
        assert severities(run_detector(LegalEvent(), [registered(), legal("2026-02-01", kind)])) == [severity]

    def test_severities_are_configurable(self):
        options = parse_thresholds({"legal_event": {"court_judgment": "critical"}}).options_for("legal_event")
        findings = run_detector(LegalEvent(options), [registered(), legal("2026-02-01", "court_judgment")])
        assert severities(findings) == ["critical"]
        with pytest.raises(ThresholdError, match="legal_event.other"):
            parse_thresholds({"legal_event": {"other": "panic"}})


# --- bank_details_change / ownership_change -----------------------------------------------


HISTORY = [
    registered(day="2025-12-01", limit=200000),
    invoice("H1", 10000, issued_on="2025-12-05"), invoice("H2", 12000, issued_on="2025-12-12"),
    invoice("H3", 11000, issued_on="2025-12-19"),
    payment("HP1", 10000, received_on="2026-01-06", invoice_id="H1"),  # 2 days late
    payment("HP2", 12000, received_on="2026-01-13", invoice_id="H2"),  # 2 days late
]


class TestBankDetailsChange:
    change = event("customer.bank_details_changed", "2026-01-20")  # after H3 fell due (2026-01-18)

    def test_the_change_alone_is_a_note(self):
        assert severities(run_detector(graded(BankDetailsChange, warning_signs=1), [*HISTORY, self.change])) == ["info"]

    def test_an_invoice_of_three_times_the_median_is_a_warning(self):
        just_under = invoice("N1", "32999.99", issued_on="2026-01-25")
        assert run_detector(graded(BankDetailsChange, warning_signs=1), [*HISTORY, self.change, just_under]) == []
        large = invoice("N1", 33000, issued_on="2026-01-25")  # 3 × median 11,000
        finding = run_detector(graded(BankDetailsChange, warning_signs=1), [*HISTORY, self.change, large])[0]
        assert finding.severity == "warning" and "large_invoice_after_change" in codes(finding)

    def test_an_invoice_the_model_flags_is_a_warning(self):
        events = [*HISTORY, self.change, invoice("N1", 15000, issued_on="2026-01-25")]
        assert severities(run_detector(graded(BankDetailsChange, warning_signs=1), events, signals=ModelSignals(invoice_anomaly=0.97))) == ["warning"]
        assert run_detector(graded(BankDetailsChange, warning_signs=1), events, signals=ModelSignals(invoice_anomaly=0.5)) == []

    def test_slower_payment_after_the_change_is_a_warning(self):
        # H3 was due 2026-01-18; the customer used to pay 2 days late; paid 2026-02-04 = 17 days late.
        slow = payment("HP3", 11000, received_on="2026-02-04", invoice_id="H3")
        finding = run_detector(graded(BankDetailsChange, warning_signs=1), [*HISTORY, self.change, slow])[0]
        assert finding.severity == "warning" and "slower_payment_after_change" in codes(finding)
        on_habit = payment("HP3", 11000, received_on="2026-02-03", invoice_id="H3")  # 16 days: 2 + 15 not reached
        assert run_detector(graded(BankDetailsChange, warning_signs=1), [*HISTORY, self.change, on_habit]) == []

    def test_a_large_invoice_and_slower_payment_are_critical(self):
        events = [*HISTORY, self.change, invoice("N1", 40000, issued_on="2026-01-25"),
                  payment("HP3", 11000, received_on="2026-02-10", invoice_id="H3")]
        assert severities(run_detector(graded(BankDetailsChange, warning_signs=1), events)) == ["critical"]

    def test_an_invoice_unpaid_long_after_its_due_date_counts_as_slower_payment_on_the_clock(self):
        events = [*HISTORY, self.change, invoice("N1", 9000, issued_on="2026-01-25")]  # due 2026-02-24
        assert run_detector(graded(BankDetailsChange, warning_signs=1), events, today=date(2026, 3, 12)) == []  # 16 days
        finding = run_detector(graded(BankDetailsChange, warning_signs=1), events, today=date(2026, 3, 13))[0]  # 17 days
        assert finding.severity == "warning" and "unpaid_after_change" in codes(finding)

    def test_what_happens_after_the_window_does_not_count(self):
        late = invoice("N1", 40000, issued_on="2026-03-22")  # 61 days after the change
        assert run_detector(graded(BankDetailsChange, warning_signs=1), [*HISTORY, self.change, late]) == []

    def test_without_enough_history_only_the_model_can_call_an_invoice_unusual(self):
        events = [registered(day="2025-12-01", limit=200000), invoice("H1", 10000, issued_on="2025-12-05"),
                  self.change, invoice("N1", 90000, issued_on="2026-01-25")]
        assert run_detector(graded(BankDetailsChange, warning_signs=1), events) == []

    def test_a_second_change_within_the_window_is_a_warning(self):
        again = event("customer.bank_details_changed", "2026-02-10")
        assert severities(run_detector(graded(BankDetailsChange, warning_signs=1), [*HISTORY, self.change, again])) == ["warning"]

    def test_the_engine_escalates_the_change_alert_rather_than_raising_another(self):
        engine = RiskEngine(parse_thresholds({"bank_details_change": {"warning_signs": 1}}))
        record, updates = None, []
        for e in [*HISTORY, self.change, invoice("N1", 40000, issued_on="2026-01-25")]:
            record, new = engine.on_event(record, e, e.occurred_at)
            updates += [u for u in new if u.alert["detector"] == "bank_details_change"]
        assert [(u.change, u.alert["severity"]) for u in updates] == [("raised", "info"), ("escalated", "warning")]
        assert updates[0].alert_id == updates[1].alert_id


class TestOwnershipChange:
    change = event("customer.ownership_changed", "2026-01-15", description="sold to Holding AG")

    def test_the_change_alone_is_a_note_with_its_description(self):
        finding = run_detector(graded(OwnershipChange, warning_signs=1), [*HISTORY, self.change])[0]
        assert finding.severity == "info" and "sold to Holding AG" in finding.reasons[0].message

    def test_a_large_invoice_after_new_owners_is_a_warning(self):
        events = [*HISTORY, self.change, invoice("N1", 50000, issued_on="2026-02-01")]
        finding = run_detector(graded(OwnershipChange, warning_signs=1), events)[0]
        assert finding.title == "Ownership changed on 2026-01-15, then an unusually large invoice"

    def test_a_bank_change_does_not_escalate_an_ownership_change(self):
        events = [*HISTORY, self.change, event("customer.bank_details_changed", "2026-01-20")]
        assert run_detector(graded(OwnershipChange, warning_signs=1), events) == []


# --- composite ----------------------------------------------------------------------------


class TestComposite:
    today = date(2026, 3, 31)

    def judge(self, recent, **options):
        detector = Composite(Composite.Options(**options)) if options else Composite()
        return run_detector(detector, [registered(day=self.today.isoformat())], recent=recent)

    def test_three_different_detectors_within_30_days_are_critical(self):
        recent = [(date(2026, 3, 2), "insurance_cover"), (date(2026, 3, 20), "overdue"), (date(2026, 3, 31), "payment_reversed")]
        finding = self.judge(recent)[0]
        assert finding.severity == "critical" and finding.title.startswith("Several warning signs at once")
        assert (finding.reasons[0].value, finding.reasons[0].threshold) == (3.0, 3.0)

    def test_a_finding_31_days_ago_no_longer_counts(self):
        recent = [(date(2026, 3, 1), "insurance_cover"), (date(2026, 3, 20), "overdue"), (date(2026, 3, 31), "payment_reversed")]
        assert self.judge(recent) == []

    def test_the_same_detector_many_times_is_one_sign(self):
        recent = [(date(2026, 3, day), "overdue") for day in range(2, 32)] + [(date(2026, 3, 5), "disputes")]
        assert self.judge(recent) == []

    def test_it_never_counts_itself_nor_the_limit_recommendations(self):
        recent = [(date(2026, 3, 20), "overdue"), (date(2026, 3, 21), "composite"),
                  (date(2026, 3, 22), "credit_limit_review"), (date(2026, 3, 23), "disputes")]
        assert self.judge(recent) == []
        assert severities(self.judge(recent, ignore=())) == ["critical"]  # the review counts if asked; itself never
        assert self.judge([*recent[:2], (date(2026, 3, 24), "composite")], ignore=()) == []

    def test_ignoring_an_unknown_detector_is_a_configuration_error(self):
        with pytest.raises(ThresholdError, match=r"\[composite\] ignore names unknown detector\(s\): overdeu"):
            parse_thresholds({"composite": {"ignore": ["overdue", "overdeu"]}})

    def test_runs_last_and_on_everything(self):
        assert Composite.order == 100
        assert "tick" in Composite.triggers and "customer.legal_event" in Composite.triggers


# --- credit_limit_review -----------------------------------------------------------------


def reliable_customer(limit=50000):
    """A year of invoices paid on time, then 42,000 (84 %) of the limit used."""
    events = [registered(day="2025-01-01", limit=limit)]
    for month in range(1, 9):
        issued = date(2025, month, 5)
        events.append(invoice(f"R{month}", 20000, issued_on=issued.isoformat()))
        events.append(payment(f"RP{month}", 20000, received_on=(issued + timedelta(days=31)).isoformat(),
                              invoice_id=f"R{month}"))
    events += [invoice("N1", 20000, issued_on="2026-01-05"), invoice("N2", 22000, issued_on="2026-01-12")]
    return events


class TestCreditLimitReview:
    def test_a_reliable_payer_near_its_limit_gets_a_higher_limit_recommended(self):
        finding = run_detector(graded(CreditLimitReview), reliable_customer())[0]
        assert finding.severity == "info"
        recommended = finding.reasons[0]
        assert (recommended.code, recommended.value, recommended.threshold) == ("recommended_limit", 63000.0, 50000.0)
        assert "not been changed" in recommended.message

    def test_no_raise_below_80_percent_utilisation(self):
        assert run_detector(graded(CreditLimitReview), reliable_customer(limit=53000)) == []  # 79 %

    def test_no_raise_without_enough_history(self):
        events = [registered(day="2025-12-01", limit=50000), invoice("R1", 20000, issued_on="2025-12-02"),
                  payment("RP1", 20000, received_on="2026-01-01", invoice_id="R1"), invoice("N1", 42000)]
        assert run_detector(graded(CreditLimitReview), events) == []

    def test_a_raise_stops_at_the_insured_limit(self):
        events = [*reliable_customer(), insured("2026-01-13", 55000)]
        assert run_detector(graded(CreditLimitReview), events)[0].reasons[0].value == 55000.0
        events = [*reliable_customer(), insured("2026-01-13", 50000)]
        assert run_detector(graded(CreditLimitReview), events) == []

    def test_a_downgrade_cuts_a_quarter_rounded_down(self):
        events = [registered(limit=50000), invoice("I1", 20000), rating("2026-01-15", "BBB", "0.01"),
                  rating("2026-02-15", "BB", "0.03")]
        finding = run_detector(graded(CreditLimitReview), events)[0]
        assert finding.severity == "warning"
        assert (finding.reasons[0].value, finding.reasons[0].threshold) == (37000.0, 50000.0)
        assert "rating_downgrade" in codes(finding)

    def test_a_downgrade_counts_within_the_rating_lookback_only_whatever_order_the_ratings_arrived_in(self):
        # the newer rating arrives first: the ledger keeps them in time order
        events = [registered(limit=50000), invoice("I1", 20000), rating("2026-02-15", "BB", "0.03"),
                  rating("2026-01-15", "BBB", "0.01")]
        last_day = date(2026, 2, 15) + timedelta(days=180)
        finding = run_detector(graded(CreditLimitReview), events, today=last_day)[0]
        assert "rating_downgrade" in codes(finding)
        later = run_detector(graded(CreditLimitReview), events, today=last_day + timedelta(days=1))
        assert all("rating_downgrade" not in codes(f) for f in later)  # (the unpaid invoice may still cut)

    def test_each_risk_signal_cuts_another_quarter(self):
        events = [registered(limit=50000), invoice("I1", 20000, issued_on="2026-01-10"),
                  rating("2026-01-15", "BBB", "0.01"), rating("2026-02-15", "BB", "0.03")]
        # 20,000 more than 30 days past due on 2026-03-12; a risk score of 0.7 on top: 3 signals.
        findings = run_detector(graded(CreditLimitReview), events, today=date(2026, 3, 12),
                                signals=ModelSignals(risk_score=0.7))
        assert codes(findings[0])[1:4] == ["overdue_share", "rating_downgrade", "risk_score"]
        assert findings[0].reasons[0].value == 21000.0  # 50,000 × 0.75³ = 21,093.75

    def test_cover_withdrawn_caps_and_insolvency_means_no_credit(self):
        events = [registered(limit=50000), invoice("I1", 20000), insured("2026-01-15", 30000)]
        assert run_detector(graded(CreditLimitReview), events)[0].reasons[0].value == 30000.0
        events.append(legal("2026-02-01", "insolvency_filing"))
        finding = run_detector(graded(CreditLimitReview), events)[0]
        assert finding.reasons[0].value == 0.0 and "insolvency" in codes(finding)

    def test_nothing_to_say_about_an_ordinary_customer(self):
        events = [registered(limit=50000), invoice("I1", 20000)]
        assert run_detector(graded(CreditLimitReview), events) == []


# --- default grading: what is a warning on its own, what is context ---------------------------


class TestDefaultGrading:
    """The defaults make a warning of what, measured on the simulated portfolio, mostly precedes a write-off
    (docs/detectors.md); the rest is noted (info) and counts for composite."""

    def test_signs_common_in_healthy_customers_are_noted_not_warned(self):
        over_limit = [registered(limit=50000), invoice("I1", 70000)]  # 140 %: critical with the full grading
        assert severities(run_detector(CreditLimit(), over_limit)) == ["info"]
        assert severities(run_detector(graded(CreditLimit), over_limit)) == ["critical"]
        disputed = [registered(limit=50000), invoice("I1", 10000), dispute("I1", 8000)]
        assert severities(run_detector(Disputes(), disputed)) == ["info"]
        bounced = [registered(limit=100000), invoice("I1", 10000),
                   payment("P1", 10000, received_on="2026-02-05", invoice_id="I1"), reversal("P1", "2026-02-07")]
        assert severities(run_detector(PaymentReversed(), bounced)) == ["info"]
        uncovered = [registered(), insured("2026-01-02", 30000), invoice("I1", 20000), insured("2026-01-20", 0)]
        assert severities(run_detector(InsuranceCover(), uncovered)) == ["info"]
        drift = ModelSignals(habit_drift=True, days_late_mean_before=2.0, days_late_mean_now=75.0)
        assert severities(run_detector(PaymentHabit(), [registered(), invoice("I1", 1000)], signals=drift)) == ["info"]
        big = [registered(), *[invoice(f"I{n}", 1000) for n in range(8)], invoice("I9", 10000)]
        assert severities(run_detector(UnusualInvoice(), big, signals=ModelSignals(invoice_anomaly=0.999))) == ["info"]
        downgraded = [registered(limit=50000), invoice("I1", 20000), rating("2026-01-15", "BBB", "0.01"),
                      rating("2026-02-15", "BB", "0.03")]
        assert severities(run_detector(CreditLimitReview(), downgraded)) == ["info"]

    def test_overdue_is_noted_past_30_days_a_warning_past_60_critical_past_90(self):
        events = [registered(limit=100000), invoice("I1", 5000, issued_on="2026-01-01", terms=30)]  # due 2026-01-31
        assert run_detector(Overdue(), events, today=date(2026, 3, 2)) == []
        assert severities(run_detector(Overdue(), events, today=date(2026, 3, 3))) == ["info"]
        assert severities(run_detector(Overdue(), events, today=date(2026, 4, 1))) == ["info"]
        finding = run_detector(Overdue(), events, today=date(2026, 4, 2))[0]
        assert (finding.severity, finding.title) == ("warning", "5,000.00 EUR more than 60 days overdue")
        finding = run_detector(Overdue(), events, today=date(2026, 5, 2))[0]
        assert (finding.severity, finding.title) == ("critical", "5,000.00 EUR more than 90 days overdue")
        assert "overdue_critical_days" in codes(finding)

    def test_the_baseline_overdue_rule_warns_past_30_days(self):
        rule = parse_thresholds({"overdue": {"info_days": 30, "warning_days": 30, "critical_days": 60}})
        detector = Overdue(rule.options_for("overdue"))
        events = [registered(limit=100000), invoice("I1", 5000, issued_on="2026-01-01", terms=30)]
        assert severities(run_detector(detector, events, today=date(2026, 3, 3))) == ["warning"]
        assert severities(run_detector(detector, events, today=date(2026, 4, 2))) == ["critical"]
        with pytest.raises(ThresholdError, match=r"\[overdue\] info_days must not be above warning_days"):
            parse_thresholds({"overdue": {"info_days": 45, "warning_days": 40}})

    def test_one_or_two_broken_promises_are_noted_three_are_critical(self):
        base = [registered(limit=100000), invoice("I1", 8000), invoice("I2", 6000), invoice("I3", 5000)]
        promises = [promise("I1", 8000, "2026-02-27"), promise("I2", 6000, "2026-02-27"), promise("I3", 5000, "2026-02-27")]
        day = date(2026, 2, 28)
        assert severities(run_detector(BrokenPromise(), [*base, *promises[:1]], today=day)) == ["info"]
        assert severities(run_detector(BrokenPromise(), [*base, *promises[:2]], today=day)) == ["info"]
        assert severities(run_detector(BrokenPromise(), [*base, *promises], today=day)) == ["critical"]
        half = [registered(limit=50000), invoice("I1", 25000), promise("I1", 25000, "2026-02-27")]
        assert severities(run_detector(BrokenPromise(), half, today=day)) == ["critical"]  # half the limit

    def test_a_change_then_one_sign_is_noted_two_signs_are_critical(self):
        change = event("customer.bank_details_changed", "2026-01-20")
        large = invoice("N1", 40000, issued_on="2026-01-25")
        assert severities(run_detector(BankDetailsChange(), [*HISTORY, change, large])) == ["info"]
        slow = payment("HP3", 11000, received_on="2026-02-10", invoice_id="H3")
        assert severities(run_detector(BankDetailsChange(), [*HISTORY, change, large, slow])) == ["critical"]

    def test_the_risk_score_warns_from_075_and_is_critical_from_085_a_jump_is_a_note(self):
        events = [registered(), invoice("I1", 5000)]

        def level(score, previous=None):
            return severities(run_detector(RiskScore(), events,
                                           signals=ModelSignals(risk_score=score, previous_risk_score=previous)))
        assert level(0.74) == [] and level(0.75) == ["warning"] and level(0.85) == ["critical"]
        assert level(0.5, previous=0.25) == ["info"]


# --- the clock, through the engine ----------------------------------------------------------


def test_the_clock_alone_breaks_the_promise_and_then_makes_the_invoice_overdue():
    engine = RiskEngine(models=NoModels())
    record = None
    for e in [registered(limit=100000), invoice("I1", 8000, issued_on="2026-01-10"),  # due 2026-02-09
              promise("I1", 8000, "2026-02-20", day="2026-02-12")]:
        record, _ = engine.on_event(record, e, e.occurred_at)
    seen = []
    today = date(2026, 2, 12)
    while (wake := engine.next_wake(record, today)) is not None and wake <= date(2026, 4, 30):
        today = wake
        now = datetime.combine(today, time(0), tzinfo=timezone.utc)
        seen += [(today, u.alert["detector"], u.alert["severity"]) for u in engine.on_tick(record, now)
                 if u.alert["detector"] in ("broken_promise", "overdue")]
    assert seen == [
        (date(2026, 2, 21), "broken_promise", "info"),  # the day after the promised date: one broken promise, a note
        (date(2026, 3, 12), "overdue", "info"),         # 31 days past due: noted
        (date(2026, 4, 11), "overdue", "warning"),      # 61 days past due
    ]


# --- the engine over the example portfolio ------------------------------------------------


def replay(engine: RiskEngine, events, until: date | None = None):
    """Events in file order at their own time, and a clock tick for every customer on every day in between."""
    records: dict = {}
    updates: list = []
    clock: date | None = None

    def tick_until(day: date) -> None:
        nonlocal clock
        while clock is not None and clock < day:
            clock += timedelta(days=1)
            now = datetime.combine(clock, time(0), tzinfo=timezone.utc)
            for customer, record in records.items():
                updates.extend((clock, customer, u) for u in engine.on_tick(record, now))
        clock = max(clock or day, day)

    for e in events:
        tick_until(e.occurred_at.date())
        records[e.customer_id], new = engine.on_event(records.get(e.customer_id), e, e.occurred_at)
        updates.extend((e.occurred_at.date(), e.customer_id, u) for u in new)
    if until is not None:
        tick_until(until)
    return records, updates


@pytest.fixture(scope="module")
def example_alerts():
    events = [parse_event(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    _, updates = replay(RiskEngine(models=NoModels()), events, until=date(2026, 7, 31))
    for day, customer, update in updates:  # shown with -s: what a credit controller would see
        print(day, customer, update.change, update.alert["detector"], update.alert["severity"], update.alert["title"])
    return updates


def first_alert(updates, customer, detector):
    return next(((day, u.alert) for day, c, u in updates if c == customer and u.alert["detector"] == detector), None)


def worst(updates, customer):
    """The highest severity each detector's alerts reached for one customer."""
    result: dict[str, str] = {}
    for _, c, u in updates:
        name, severity = u.alert["detector"], u.alert["severity"]
        if c == customer and SEVERITY_RANK[severity] >= SEVERITY_RANK[result.get(name, "info")]:
            result[name] = severity
    return result


def test_nordhafen_raises_the_alerts_a_credit_controller_expects(example_alerts):
    assert worst(example_alerts, "C001") == {
        # Warnings on their own: what mostly precedes a write-off (docs/detectors.md, "Severities").
        "broken_promise": "critical",      # 25,000 promised for 2026-03-15: half the limit
        "composite": "critical",           # bank change + broken promise + bounced payment within 30 days
        "rating_downgrade": "warning",     # first rating B-, PD 8 %
        "overdue": "critical",             # INV-1002 more than 30 days late = half the limit
        "legal_event": "critical",         # insolvency filing
        # Context (info) on their own; they count for composite.
        "bank_details_change": "info",     # new bank account, then INV-1002 paid 25 days late (habit: 3): one sign
        "credit_limit": "info",            # INV-1003 takes exposure to 53,000 of 50,000
        "payment_reversed": "info",        # the 25,000 payment bounced: 47 % of what is owed
        "credit_limit_review": "info",     # recommendation to cut
        "insurance_cover": "info",         # cover withdrawn with 53,000 owed
    }
    assert first_alert(example_alerts, "C001", "broken_promise")[0] == date(2026, 3, 16)  # the day after, by the clock
    # bank change, broken promise, and the bounce of 03-18 (the limit excess of 03-02 no longer counts)
    assert first_alert(example_alerts, "C001", "composite")[0] == date(2026, 3, 18)
    assert first_alert(example_alerts, "C001", "overdue")[0] == date(2026, 3, 22)  # 31 days past due
    reversed_alert = first_alert(example_alerts, "C001", "payment_reversed")[1]
    assert "PAY-502" in reversed_alert["reasons"][0]["message"] and "bounced" in reversed_alert["reasons"][0]["message"]
    limit = first_alert(example_alerts, "C001", "credit_limit_review")[1]
    assert limit["reasons"][0]["code"] == "recommended_limit" and limit["reasons"][0]["value"] < 50000


def test_sol_verde_only_gets_a_note_about_its_new_owner(example_alerts):
    alerts = [(u.alert["detector"], u.alert["severity"]) for _, c, u in example_alerts if c == "C002"]
    assert alerts == [("ownership_change", "info")]


def test_one_alert_per_episode_however_many_ticks(example_alerts):
    raised = [(c, u.alert["detector"]) for _, c, u in example_alerts if u.change == "raised"]
    # Each detector raises once per customer, except composite, whose window emptied in May and filled again
    # when the write-off of 2026-06-30 re-triggered the (not time-driven) insurance detector.
    duplicates = {item for item in raised if raised.count(item) > 1}
    assert duplicates <= {("C001", "composite")}
