from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache
from decimal import Decimal
from typing import Any

from pydantic import Field

from detectors.base import SEVERITY_RANK, DetectionContext, Detector, DetectorOptions, Finding, Reason, money, pct, register
from detectors.rules._common import dec, figures, round_to, stamp_day
from detectors.rules._grading import MaxSeverity, capped, max_severity_field
from detectors.rules.credit_limit import EXPOSURE_CHANGES
from detectors.rules.rating_downgrade import RatingDowngrade, previous_rating
from pipeline.ledger import DEFAULT_CONFIG, Figures, settled_count

REVIEW_CHANGES = EXPOSURE_CHANGES | {
    "tick", "customer.rating_changed", "customer.insurance_limit_changed", "customer.legal_event",
    "customer.terms_changed", "payment.promised",
}
_INSOLVENCY = ("insolvency_filing", "liquidation")
#: Judges downgrades with its default options (it keeps no state).
_JUDGE = RatingDowngrade()


#: Entries of the two caches below: more than the customers with ratings of a large portfolio (a cache
#: smaller than that, visited customer after customer, forgets each entry before it is asked again).
_CACHED = 1 << 16


@lru_cache(maxsize=_CACHED)
def _downgrades(ratings: tuple) -> list[tuple[date, Reason]]:
    """(day, reason) of each agency's latest rating that is a downgrade of warning level or worse, in the
    ratings' order: the first one within the lookback is the review's rating signal. Remembered, as a pure
    function of the ratings (treat the list as read-only)."""
    found = []
    latest_by_agency: dict[str, int] = {}
    for index, rating in enumerate(ratings):
        latest_by_agency[rating[2].strip().casefold()] = index
    for index in sorted(latest_by_agency.values()):
        current = ratings[index]
        previous = previous_rating(ratings, index)
        severity, reasons = _assess(previous, current)
        if severity is not None and SEVERITY_RANK[severity] >= SEVERITY_RANK["warning"]:
            was = f" from {previous[3]}" if previous is not None else ""
            found.append((stamp_day(current[0]), Reason(
                "rating_downgrade",
                f"{current[2]} rated the customer {current[3]}{was} on {stamp_day(current[0]).isoformat()} "
                f"({reasons[0].message})")))
    return found


@lru_cache(maxsize=_CACHED)
def _assess(previous: Any, current: Any) -> tuple[str | None, list[Reason]]:
    """``RatingDowngrade().assess``, remembered: a pure function of two ratings (treat the reasons as read-only)."""
    return _JUDGE.assess(previous, current)


class CreditLimitReviewOptions(DetectorOptions):
    cut_step: float = Field(0.25, ge=0.05, le=0.9, description="share of the limit to cut per risk signal")
    raise_step: float = Field(0.25, ge=0.05, le=2.0, description="share of the limit to add for a reliable payer")
    rounding: float = Field(1000.0, ge=1, le=1e7,
                            description="recommended limits are rounded to this (cuts down, raises to nearest)")
    overdue_days: int = Field(30, ge=1, le=365, description="days past due that count as seriously overdue")
    overdue_share: float = Field(0.25, ge=0.01, le=1.0,
                                 description="share of the exposure seriously overdue that is a risk signal")
    dbt_rise_days: float = Field(10.0, ge=1, le=365,
                                 description="recent days beyond terms above the long-run average by this much is a risk signal")
    rating_lookback_days: int = Field(180, ge=1, le=730,
                                      description="a rating downgrade (warning or worse) this recent is a risk signal")
    risk_score_cut: float = Field(0.6, ge=0.0, le=1.0, description="model risk score that is a risk signal")
    follow_insurance: bool = Field(True, description="never recommend more than the insured limit, when there is one")
    legal_lookback_days: int = Field(365, ge=1, le=3650,
                                     description="an insolvency filing or liquidation this recent means no credit (limit 0)")
    raise_utilisation: float = Field(0.8, ge=0.1, le=2.0, description="utilisation from which a reliable payer may need more")
    raise_max_days_beyond_terms: float = Field(5.0, ge=0, le=90,
                                               description="a reliable payer pays on average at most this many days late")
    raise_min_paid_invoices: int = Field(6, ge=1, le=1000, description="paid invoices needed before a raise is suggested")
    raise_min_history_days: int = Field(180, ge=0, le=3650, description="customer relationship age needed before a raise")
    max_severity: MaxSeverity = max_severity_field("info", "a recommendation to cut the limit")


@register
class CreditLimitReview(Detector):
    """A recommended credit limit: lower when risk rises, higher for reliable payers near their limit.

    Only a recommendation for the credit controller: the limit is never
    changed. The first reason (``recommended_limit``) carries the
    recommended limit as ``value`` and the current limit as ``threshold``.

    Cut (a recommendation: info by default, ``max_severity``; the signs
    behind it alert through their own detectors), one step per risk signal::

        recommended = limit × (1 − cut_step) ^ signals, rounded down to 1,000

    with ``cut_step`` 25 % and these signals: at least 25 % of the exposure
    more than 30 days past due; recent days beyond terms at least 10 days
    above the long-run average; a rating downgrade of warning level or worse
    (see ``rating_downgrade``) in the last 180 days; a model risk score of
    0.6 or more. On top: never more than the insured limit (if any), and 0
    (cash in advance) after an insolvency filing or liquidation in the last
    year.

    Raise (info), when there is no risk signal and the customer is a reliable
    payer near its limit — utilisation at least 80 %, at most 5 days beyond
    terms on average (overall and recently), nothing more than 30 days past
    due, no broken promise or open dispute, at least 6 paid invoices and 180
    days of history::

        recommended = limit × (1 + raise_step), rounded to 1,000, at most the insured limit

    >>> from pipeline.builders import register as registered, invoice, make
    >>> from detectors.testing import run_detector
    >>> events = [registered(limit=50000), invoice("I1", 20000),
    ...           make("customer.rating_changed", "2026-01-15", agency="Bureau", rating="BBB", probability_of_default="0.01"),
    ...           make("customer.rating_changed", "2026-02-15", agency="Bureau", rating="BB", probability_of_default="0.03")]
    >>> finding = run_detector(CreditLimitReview(), events)[0]
    >>> finding.severity, finding.title
    ('info', 'Consider cutting the credit limit to 37,000.00 EUR (now 50,000.00 EUR)')
    >>> finding.reasons[0].code, finding.reasons[0].value, finding.reasons[0].threshold
    ('recommended_limit', 37000.0, 50000.0)
    """

    name = "credit_limit_review"
    update_on_change = True
    episode = "condition"
    triggers = REVIEW_CHANGES
    Options = CreditLimitReviewOptions
    options: CreditLimitReviewOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        pos = figures(ctx)  # limits, exposure, overdue and days beyond terms; the whole position only to raise
        limit = pos.credit_limit
        if not limit:
            # No limit, or 0 (cash in advance): no cut goes below 0 and there is nothing to raise.
            return [], memory
        opts = self.options
        currency = pos.currency
        signals = self._risk_signals(ctx, pos)
        caps: list[tuple[Decimal, Reason]] = []
        insured = pos.insured_limit
        if opts.follow_insurance and insured is not None and insured < limit:
            caps.append((insured, Reason("insured_limit_cap",
                                         f"the insured limit is {money(insured, currency)}, below the credit limit",
                                         float(insured), float(limit))))
        legal = self._insolvency(ctx)
        if legal is not None:
            caps.append((Decimal(0), legal))
        if signals or caps:
            recommended = limit * (1 - dec(opts.cut_step)) ** len(signals)
            for cap, _ in caps:
                recommended = min(recommended, cap)
            recommended = max(round_to(recommended, opts.rounding, "down"), Decimal(0))
            if recommended >= limit:
                return [], memory
            reasons = [Reason("recommended_limit",
                              f"Recommended credit limit {money(recommended, currency)} instead of "
                              f"{money(limit, currency)} (a recommendation; the limit has not been changed)",
                              float(recommended), float(limit))]
            reasons += signals
            reasons += [reason for _, reason in caps]
            if signals:
                reasons.append(Reason("formula",
                                      f"{money(limit, currency)} × (1 − {opts.cut_step:g}) ^ {len(signals)} risk "
                                      f"signal{'s' if len(signals) > 1 else ''}"
                                      f"{', capped' if caps else ''}, rounded down to {opts.rounding:,.0f}"))
            title = f"Consider cutting the credit limit to {money(recommended, currency)} (now {money(limit, currency)})"
            return [self.finding(capped("warning", opts.max_severity), title, reasons, ctx)], memory
        reasons = self._reliable_near_limit(ctx, pos)
        if reasons is None:
            return [], memory
        recommended = round_to(limit * (1 + dec(opts.raise_step)), opts.rounding, "nearest")
        if opts.follow_insurance and insured is not None:
            recommended = min(recommended, round_to(insured, opts.rounding, "down"))
        if recommended <= limit:
            return [], memory
        reasons.insert(0, Reason("recommended_limit",
                                 f"Recommended credit limit {money(recommended, currency)} instead of "
                                 f"{money(limit, currency)} (a recommendation; the limit has not been changed)",
                                 float(recommended), float(limit)))
        reasons.append(Reason("formula", f"{money(limit, currency)} × (1 + {opts.raise_step:g}), rounded to "
                                         f"{opts.rounding:,.0f}{', at most the insured limit' if insured is not None and opts.follow_insurance else ''}"))
        title = f"Consider raising the credit limit to {money(recommended, currency)} (now {money(limit, currency)})"
        return [self.finding("info", title, reasons, ctx)], memory

    # --- cut ----------------------------------------------------------------------

    def _risk_signals(self, ctx: DetectionContext, pos: Figures) -> list[Reason]:
        opts = self.options
        signals: list[Reason] = []
        if pos.exposure > 0 and pos.max_days_past_due > opts.overdue_days:
            late = pos.outstanding_past(opts.overdue_days)
            share = float(late / pos.exposure)
            if late > 0 and share >= opts.overdue_share:
                signals.append(Reason("overdue_share",
                                      f"{money(late, pos.currency)} ({pct(share)} of the exposure) is more than "
                                      f"{opts.overdue_days} days past due (signal from {pct(opts.overdue_share)})",
                                      round(share, 4), opts.overdue_share))
        days_beyond_terms, days_beyond_terms_recent = pos.days_beyond_terms()
        if days_beyond_terms is not None and days_beyond_terms_recent is not None:
            rise = float(days_beyond_terms_recent - days_beyond_terms)
            if rise >= opts.dbt_rise_days:
                signals.append(Reason("paying_slower",
                                      f"recently paid {float(days_beyond_terms_recent):.0f} days beyond terms against "
                                      f"{float(days_beyond_terms):.0f} on average ({rise:.0f} days slower; signal "
                                      f"from {opts.dbt_rise_days:g})",
                                      round(rise, 1), opts.dbt_rise_days))
        downgrade = self._rating_signal(ctx)
        if downgrade is not None:
            signals.append(downgrade)
        score = ctx.models.risk_score
        if score is not None and score >= opts.risk_score_cut:
            signals.append(Reason("risk_score", f"model risk score {score:.2f} (signal from {opts.risk_score_cut:.2f})",
                                  round(score, 4), opts.risk_score_cut))
        return signals

    def _rating_signal(self, ctx: DetectionContext) -> Reason | None:
        ratings = ctx.ledger.profile.ratings
        if not ratings:
            return None
        horizon = ctx.today - timedelta(days=self.options.rating_lookback_days)
        if stamp_day(ratings[-1][0]) < horizon:
            return None  # the ledger keeps ratings in time order: every one is older than the lookback
        for day, reason in _downgrades(tuple(ratings)):
            if day >= horizon:
                return reason
        return None

    def _insolvency(self, ctx: DetectionContext) -> Reason | None:
        legal_events = ctx.ledger.profile.legal_events
        if not legal_events:
            return None
        horizon = ctx.today - timedelta(days=self.options.legal_lookback_days)
        for ts, _, kind, description in reversed(legal_events):
            if kind in _INSOLVENCY and stamp_day(ts) >= horizon:
                detail = f": {description}" if description else ""
                return Reason("insolvency", f"{kind.replace('_', ' ')} on {stamp_day(ts).isoformat()}{detail} — "
                                            f"no further credit (cash in advance)", 0.0)
        return None

    # --- raise --------------------------------------------------------------------

    def _reliable_near_limit(self, ctx: DetectionContext, quick: Figures) -> list[Reason] | None:
        opts = self.options
        limit = quick.credit_limit
        if not limit or quick.utilisation is None or float(quick.utilisation) < opts.raise_utilisation:
            return None
        pos = quick  # every check below reads a cheap figure; the position only to tell broken promises
        dbt, recent = quick.days_beyond_terms()
        if dbt is None or float(dbt) > opts.raise_max_days_beyond_terms:
            return None
        if recent is not None and float(recent) > opts.raise_max_days_beyond_terms:
            return None
        if quick.max_days_past_due > opts.overdue_days:
            return None
        if quick.any_open_dispute or (quick.promise_deadline_passed and ctx.position.promises_broken):
            return None
        paid = ctx.ledger.lifetime.invoices + self._settled_count(ctx)
        if paid < opts.raise_min_paid_invoices:
            return None
        since = self._customer_since(ctx)
        if since is None or (ctx.today - since).days < opts.raise_min_history_days:
            return None
        return [
            Reason("near_limit", f"exposure {money(pos.exposure, pos.currency)} is {pct(pos.utilisation)} of the limit "
                                 f"(from {pct(opts.raise_utilisation)})",
                   float(pos.utilisation), opts.raise_utilisation),
            Reason("reliable_payer", f"{paid} invoices paid, on average {float(dbt):.0f} days beyond terms "
                                     f"(at most {opts.raise_max_days_beyond_terms:g}), customer since {since.isoformat()}",
                   float(dbt), opts.raise_max_days_beyond_terms),
        ]

    @staticmethod
    def _settled_count(ctx: DetectionContext) -> int:
        return settled_count(ctx.ledger, ctx.today, ctx.ledger_config or DEFAULT_CONFIG)

    @staticmethod
    def _customer_since(ctx: DetectionContext) -> date | None:
        profile = ctx.ledger.profile
        days = [stamp_day(profile.registered[0])] if profile.registered else []
        days += [inv.issued_on for inv in ctx.ledger.invoices.values() if inv.issue is not None]
        return min(days) if days else None
