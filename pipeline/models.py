"""The online models: late payment, payment-habit drift, invoice anomaly, customer risk.

:class:`OnlineModels` implements the engine's ``ModelSuite`` protocol. It is
called after the ledger applied an event (or when the clock passes a day) and
answers with :class:`~detectors.base.ModelSignals`. Two kinds of state:

* **Global** (``self``): the late-payment model, the portfolio's label
  counters and the progressive metrics. One per worker; :meth:`snapshot` /
  :meth:`restore` carry it over a restart (pickle of the river objects).
* **Per customer** (``record.risk.models``, a small JSON-able dict stored with
  the customer's record; key by key)::

      "h":  [n, n_late, ewm_late, n_dl, sum_dl, ewm_dl]   labelled history
      "a":  [n, mean, m2]            Welford stats of log(invoice amount)
      "o":  {invoice_id: [issued, due, p, state, outstanding, untouched, features]}
            the open invoices (dates as ordinals, outstanding in the base
            currency; features as text, ``stored_features``). state 0: waiting for its label, features kept;
            1: labelled late while still open (features dropped); 2: open,
            issued before the models saw it (no p). untouched: no cash or
            credit on it yet.
      "c":  1 when "o" is exactly the ledger's open invoices and no cash is
            on account, so that an invoice, or a payment naming an untouched
            invoice, is applied here without a full ledger allocation
      "ph": [n, mean, sum, min, n_at_min, mean_at_min, n_since, sum_since]
            Page-Hinkley test for an increase of days late
      "dd": [day, before, now]       the last habit drift
      "bp": [broken promises, day]   counted once a day or when cash moves
      "r":  [risk, previous risk]

  Size: ~120 bytes of JSON plus ~150 per open invoice awaiting its label (~50 once
  labelled); nothing grows with history.

Cost: an allocation of the customer's ledger only when the shortcut above
does not apply (cash on account, partial or over-payments, credit notes,
reversals, write-offs, the first event of a record) — and the ledger keeps
its allocation up to date, so that costs O(1) after the first event and
``_sync`` looks only at the open invoices and those it watches; otherwise
O(open invoices) per event plus one river predict (at issue) or learn (at label).

**Late payment** — score before learn (progressive validation). At
``invoice.issued`` the features known at that moment (the customer's
*labelled* history, its open and overdue invoices, utilisation, rating PD,
open disputes, the amount against the customer's typical amount, terms) are
computed once, scored, and stored with ``p`` on the open invoice. The label
arrives later and is learned then, with that stored ``p`` going into the
metrics:

* settlement by cash: ``y = days late > late_days``;
* write-off: ``y = 1``;
* the invoice still unpaid ``late_days`` days after its due date (daily tick,
  or any later event): ``y = 1`` right then; it is not labelled again when it
  is finally paid (its days late still feed the history statistics).

An invoice closed by credit notes alone teaches nothing and is dropped. The
customer's history statistics change only when a label arrives, so the
features of an invoice never see its own outcome or any later one.

The model is a river logistic regression on hand-scaled features (no online
scaler, so that initial weights mean something): it starts as the customer's
smoothed late rate — ``logit(p) = logit((late + a·g) / (n + a))`` with ``g``
the portfolio's late rate (itself starting at a prior) — plus small priors on
overdue exposure, and learns from there. :meth:`warm_start` replays history
to train it before going live.

**Payment-habit drift** — Page-Hinkley (river's ``drift.PageHinkley`` with
``mode="up"``, the same statistic implemented on a JSON list so it can live
in the customer's record; a test checks both agree) on the days late of each
settlement. When it fires, ``habit_drift`` is set with the mean days late
before the change (mean up to the test's minimum) and since.

**Invoice anomaly** — Welford mean/variance of log(amount) per customer (the
statistic of river's ``stats.Var``, kept as three numbers). After
``min_history`` invoices, an invoice ``z`` standard deviations above the
customer's mean scores ``z² / (1 + z²)``: by Cantelli's inequality the share
of invoices that far above the mean is at most ``1 - score``, whatever the
distribution. Smaller-than-usual invoices score 0.

**Customer risk** 0..1 — the open exposure's P(late) (each open invoice's
``p`` weighted by what is still outstanding; 1 for an invoice already
labelled late; the customer's smoothed late rate when nothing is open),
combined as ``1 - Π(1 - wₖ·sₖ)`` with the overdue share (each amount counted
in full from 90 days past due), the rating's PD, a habit drift in the last
90 days, broken promises and insolvency/court events in the last year. The
weights (``RISK_WEIGHT_*``) keep any one signal from saturating the score:
all exposure late alone gives 0.6.
"""

from __future__ import annotations

import heapq
import math
import pickle
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from river import linear_model, metrics, optim

from detectors.base import ModelSignals
from pipeline.config import LedgerConfig
from pipeline.events import Event, InvalidEvent, parse_event, validate_event
from pipeline.scoring import clip as _clip, logit as _logit, roc_auc
from pipeline.ledger import (
    DEFAULT_CONFIG,
    Allocation,
    LedgerRejected,
    allocate,
    apply,
    cash_on_account,
    new_state,
    pooled_cash,
    to_base,
    views_in_order,
)

if TYPE_CHECKING:  # pragma: no cover
    from detectors.config import ModelOptions
    from pipeline.engine import CustomerRecord

#: The late-payment model's inputs, in the order they are stored per invoice.
FEATURES: tuple[str, ...] = (
    "late_logit",  # logit of the customer's smoothed late rate (prior: the portfolio's rate)
    "late_recent",  # EWM of the customer's recent labels minus the portfolio rate
    "history",  # log1p(labelled invoices) / 4
    "days_late_mean",  # smoothed mean days late at settlement / 30
    "days_late_recent",  # EWM of days late at settlement / 30
    "amount_z",  # log amount against the customer's typical (z, clipped ±4) / 2
    "amount_log",  # (log10(amount in base currency) - 3) / 2
    "terms",  # payment terms / 30 - 1
    "utilisation",  # exposure including this invoice / credit limit, clipped 0..3
    "overdue_share",  # share of the other open amount that is past due
    "overdue_count",  # log1p(open invoices past due)
    "oldest_overdue",  # days past due of the oldest open invoice / 30, clipped 0..6
    "pd",  # rating probability of default × 10, clipped 0..5
    "disputes",  # log1p(open disputes on other invoices)
)

#: Where the model starts (all other weights 0, intercept 0): P(late) = the customer's smoothed
#: late rate, raised by overdue invoices, a rating's PD, high utilisation and an unusually large amount.
PRIOR_WEIGHTS: dict[str, float] = {
    "late_logit": 1.0,
    "overdue_share": 0.5,
    "oldest_overdue": 0.2,
    "pd": 0.3,
    "utilisation": 0.3,
    "amount_z": 0.2,
}

#: Events after which open invoices may have closed or changed balance.
BALANCE_EVENTS = frozenset({
    "invoice.issued", "invoice.adjusted", "invoice.dispute_resolved", "invoice.written_off",
    "payment.received", "payment.reversed",
})

HISTORY_PRIOR = 3.0  # pseudo-invoices of the portfolio rate in a customer's smoothed rate
PORTFOLIO_PRIOR = 20.0  # pseudo-labels of the prior in the portfolio's rate
EWM = 0.3  # weight of the newest label in the customer's recent averages
DAYS_LATE_PRIOR = 5.0  # portfolio mean days late before any settlement
DAYS_LATE_CLIP = (-30.0, 180.0)
DRIFT_ACTIVE_DAYS = 90
# Risk score: 1 - Π(1 - weight × signal), so no single signal saturates it.
RISK_WEIGHT_LATE = 0.6  # exposure-weighted P(late) of the open invoices
RISK_WEIGHT_OVERDUE = 0.5  # overdue share, each amount counted in full from 90 days past due
OVERDUE_FULL_DAYS = 90
RISK_WEIGHT_DRIFT = 0.2
RISK_WEIGHT_BROKEN_PROMISE = 0.1  # each, up to five
LEGAL_ACTIVE_DAYS = 365
LEGAL_WEIGHT = {"insolvency_filing": 0.5, "liquidation": 0.6, "court_judgment": 0.2, "other": 0.05}


def _r(value: float, digits: int = 4) -> float:
    return round(value, digits)


_BASE_FLOATS: dict[Decimal, float] = {}


def _base_float(amount: Decimal) -> float:
    """``round(float(amount), 2)``, remembered: the same outstanding amounts come back at every allocation."""
    value = _BASE_FLOATS.get(amount)
    if value is None:
        if len(_BASE_FLOATS) >= 100_000:
            _BASE_FLOATS.clear()
        value = _BASE_FLOATS[amount] = round(float(amount), 2)
    return value


# --- evaluation helpers ----------------------------------------------------------


def auc_by_issue_date(predictions: Iterable[tuple[int, float, int]], last_fraction: float = 1.0) -> float | None:
    """Exact AUC of (issue ordinal, p, y) triples, on the last ``last_fraction`` by issue date."""
    ordered = sorted(predictions, key=lambda t: t[0])
    if last_fraction < 1.0:
        ordered = ordered[int(len(ordered) * (1.0 - last_fraction)):]
    return roc_auc([p for _, p, _ in ordered], [y for _, _, y in ordered])


# --- Page-Hinkley on a JSON list ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftResult:
    before: float
    now: float


def page_hinkley_update(state: list[float] | None, x: float, delta: float, threshold: float,
                        min_instances: int, alpha: float = 1.0) -> tuple[list[float], DriftResult | None]:
    """One step of the Page-Hinkley test for an *increase* of the mean.

    The same statistic as ``river.drift.PageHinkley(mode="up")``: running mean
    ``x̄``, cumulative ``m = α·m + (x - x̄ - δ)``, its minimum ``M``; drift when
    ``m - M > λ`` after ``min_instances`` values. On drift the state starts over
    (river does so on the next update). Besides the test it tracks the mean of
    the values up to the minimum ("before") and since ("now").

    >>> state, fired = None, []
    >>> for x in [2, 3, 1, 2, 2, 3, 25, 30, 28]:
    ...     state, drift = page_hinkley_update(state, x, delta=2.0, threshold=10.0, min_instances=5)
    ...     fired.append(drift)
    >>> fired.index(next(d for d in fired if d)), fired[6]
    (6, DriftResult(before=2.1667, now=25.0))
    """
    if state is None:
        state = [0.0, 0.0, 0.0, math.inf, 0.0, 0.0, 0.0, 0.0]
    n, mean, total, minimum, n_min, mean_min, n_since, sum_since = state
    n += 1
    mean += (x - mean) / n
    total = alpha * total + (x - mean) - delta
    n_since += 1
    sum_since += x
    if total < minimum:
        minimum, n_min, mean_min, n_since, sum_since = total, n, mean, 0.0, 0.0
    if n >= min_instances and total - minimum > threshold:
        before = mean_min if n_min else mean
        now = sum_since / n_since if n_since else x
        return [0.0, 0.0, 0.0, math.inf, 0.0, 0.0, 0.0, 0.0], DriftResult(round(before, 4), round(now, 4))
    return [n, round(mean, 6), round(total, 6), round(minimum, 6) if minimum != math.inf else minimum, n_min,
            round(mean_min, 6), n_since, round(sum_since, 4)], None


def _ph_to_json(state: list[float]) -> list[float | None]:
    if math.inf not in state:  # (``in`` compares as ``==`` does)
        return list(state)
    return [None if v == math.inf else v for v in state]


def _ph_from_json(state: list[float | None] | None) -> list[float] | None:
    if state is None:
        return None
    if None not in state:
        return list(state)
    return [math.inf if v is None else v for v in state]


# --- the suite -----------------------------------------------------------------------


def features_text(features: Sequence[float]) -> str:
    """A feature vector as it is kept on an open invoice until its label arrives.

    Text, written once at issue: the customer's record is encoded on every
    batch that touches the customer, and as a JSON list each of the 14 floats
    of every open invoice would be formatted again each time (most of the
    record's encoding time for a customer with many open invoices). ``repr``
    gives back the same float, sign of zero included.
    """
    return ",".join(map(repr, features))


def stored_features(entry: list[Any]) -> list[float] | None:
    """The feature vector of an open invoice's entry in ``"o"``; None once it is labelled.

    Records written before the features were kept as text hold a list.
    """
    features = entry[6]
    if features is None or isinstance(features, list):
        return features
    return [float(value) for value in features.split(",")]


class OnlineModels:
    """Late-payment, drift, anomaly and risk models behind the engine's ModelSuite protocol."""

    def __init__(
        self,
        late_days: int | ModelOptions = 30,
        ledger_config: LedgerConfig = DEFAULT_CONFIG,
        *,
        prior_late_rate: float | None = None,
        learning_rate: float = 0.05,
        l2: float = 0.0,
        drift_threshold: float = 10.0,
        drift_delta: float = 5.0,
        drift_min_instances: int = 5,
        anomaly_min_history: int = 5,
        anomaly_min_sd: float = 0.1,
        keep_predictions: int | None = 200_000,
        exact: bool = False,
    ):
        if not isinstance(late_days, int):  # the [models] options themselves (see from_options)
            options = late_days
            late_days, drift_threshold = options.late_days, options.drift_threshold
        self.late_days = late_days
        self.ledger_config = ledger_config
        self.prior_late_rate = prior_late_rate if prior_late_rate is not None else (0.35 if late_days == 0 else 0.15)
        self.learning_rate = learning_rate
        self.l2 = l2
        self.drift_threshold = drift_threshold
        self.drift_delta = drift_delta
        self.drift_min_instances = drift_min_instances
        self.anomaly_min_history = anomaly_min_history
        self.anomaly_min_sd = anomaly_min_sd
        self.keep_predictions = keep_predictions
        self.exact = exact  # always allocate (no fast paths): for tests of the fast paths
        self._fresh_model()
        self._fresh_metrics()

    @classmethod
    def from_options(cls, options: ModelOptions, ledger_config: LedgerConfig = DEFAULT_CONFIG, **kw: Any) -> OnlineModels:
        """Built from the ``[models]`` section of the thresholds file."""
        return cls(late_days=options.late_days, ledger_config=ledger_config,
                   drift_threshold=options.drift_threshold, **kw)

    @classmethod
    def from_history(cls, events: Iterable[Event | dict[str, Any]] | str | Path, **kw: Any) -> OnlineModels:
        """A suite whose late-payment model was trained on past events (see :meth:`warm_start`)."""
        models = cls(**kw)
        models.warm_start(events)
        return models

    def _fresh_model(self) -> None:
        model = linear_model.LogisticRegression(
            optimizer=optim.SGD(self.learning_rate), l2=self.l2, intercept_lr=self.learning_rate,
        )
        for name, weight in PRIOR_WEIGHTS.items():
            model._weights[name] = weight  # river keeps weights in a VectorDict; this is its initial value
        self.model = model
        # Portfolio counters: labels, late labels, settlements, Σ days late.
        self.n_labels = 0
        self.n_late = 0
        self.n_settled = 0
        self.sum_days_late = 0.0

    def _fresh_metrics(self) -> None:
        self.roc = metrics.ROCAUC()  # river default: 10 thresholds (an approximation; see roc_auc_exact)
        self.log_loss = metrics.LogLoss()
        self.predictions: deque[tuple[int, float, int]] = deque(maxlen=self.keep_predictions)
        self.labels_by = {"settled": 0, "written_off": 0, "overdue": 0}
        self.scored = 0  # labels scored since the metrics started
        self.scored_late = 0

    # --- global state ----------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The global state (model, portfolio counters, metrics) as bytes."""
        state = {key: value for key, value in self.__dict__.items() if key != "ledger_config"}
        return pickle.dumps({"version": 1, "state": state}, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, raw: bytes) -> None:
        """Take back a :meth:`snapshot` (a worker restart keeps what the model learned)."""
        data = pickle.loads(raw)
        if data.get("version") != 1:
            raise ValueError(f"unknown model snapshot version {data.get('version')!r}")
        if data["state"]["late_days"] != self.late_days:
            raise ValueError(
                f"the model snapshot predicts payment more than {data['state']['late_days']} days late, "
                f"but late_days is {self.late_days}; start without the snapshot to train a new model"
            )
        self.__dict__.update(data["state"])

    def portfolio_late_rate(self) -> float:
        return (self.n_late + PORTFOLIO_PRIOR * self.prior_late_rate) / (self.n_labels + PORTFOLIO_PRIOR)

    def portfolio_days_late(self) -> float:
        return (self.sum_days_late + PORTFOLIO_PRIOR * DAYS_LATE_PRIOR) / (self.n_settled + PORTFOLIO_PRIOR)

    def progressive_auc(self) -> float | None:
        """The progressive ROC AUC (``metrics()["roc_auc"]``) alone, in constant time.

        ``metrics()`` also sorts every kept prediction for the exact AUCs; the
        worker's gauge reads this every few seconds on its event loop.
        """
        return round(float(self.roc.get()), 4) if self.scored else None

    def metrics(self) -> dict[str, Any]:
        """Progressive metrics: every prediction was made before its label was known."""
        scored = self.scored
        kept = len(self.predictions)
        return {
            "late_days": self.late_days,
            "labels": scored,
            "labels_by": dict(self.labels_by),
            "late_rate": round(self.scored_late / scored, 4) if scored else None,
            "mean_p": round(sum(p for _, p, _ in self.predictions) / kept, 4) if kept else None,
            "roc_auc": self.progressive_auc(),
            "roc_auc_exact": _round(auc_by_issue_date(self.predictions)),
            "roc_auc_last_30pct": _round(auc_by_issue_date(self.predictions, 0.3)),
            "log_loss": round(self.log_loss.get(), 4) if scored else None,
            "trained_on": self.n_labels,
        }

    # --- ModelSuite protocol -----------------------------------------------------------

    def on_event(self, record: CustomerRecord, event: Event, today: date) -> ModelSignals:
        m = record.risk.models
        if not m:
            m.update(self._new_customer())
        signals = ModelSignals()
        kind = event.type
        alloc: Allocation | None = None
        drift: DriftResult | None = None
        if kind == "invoice.issued":
            signals.invoice_anomaly, alloc, drift = self._issue(record, m, event, today)
        elif kind == "invoice.written_off":
            entry = m["o"].get(event.invoice_id)  # type: ignore[attr-defined]
            if entry is not None and entry[3] == 0:
                self._label(m, entry, 1, "written_off")
        if kind in BALANCE_EVENTS and kind != "invoice.issued":
            known, drift = self._fast_balance(record, m, event)
            if not known:
                if m["o"] or self.exact:
                    alloc = allocate(record.ledger, self.ledger_config)
                    drift = self._sync(record, m, alloc)
                else:
                    m["c"] = 0  # nothing open to watch; the next invoice looks at the full allocation
        if drift is not None:
            signals.habit_drift = True
            signals.days_late_mean_before, signals.days_late_mean_now = drift.before, drift.now
            m["dd"] = [today.toordinal(), drift.before, drift.now]
        self._finish(record, m, today, signals, alloc, kind in BALANCE_EVENTS or kind == "payment.promised")
        return signals

    def on_tick(self, record: CustomerRecord, today: date) -> ModelSignals:
        m = record.risk.models
        if not m:
            m.update(self._new_customer())
        signals = ModelSignals()
        self._finish(record, m, today, signals, None)
        return signals

    def first_wake(self, record: CustomerRecord, t: int) -> int:
        """The ordinal of the earliest of :meth:`wake_dates` after day ``t`` (an ordinal); 0 for none."""
        m = record.risk.models
        if not m:
            return 0
        late_days = self.late_days + 1
        full_days = OVERDUE_FULL_DAYS + 1
        best = none = 1 << 62  # "no day yet", above any ordinal
        for entry in m["o"].values():
            # Its days: due + 1 (overdue), due + late_days + 1 (the label, while it waits for one) and
            # due + OVERDUE_FULL_DAYS + 1; due + 1 comes first of them, so it is the answer while ahead.
            due = entry[1]
            if due >= t:  # due + 1 > t
                if due < best - 1:
                    best = due + 1
                continue
            day = due + full_days
            if day <= t:
                day = 0
            if entry[3] == 0:
                label_day = due + late_days
                if t < label_day and (not day or label_day < day):
                    day = label_day
            if day and day < best:
                best = day
        if best == none:
            best = 0
        if m.get("dd"):
            day = m["dd"][0] + DRIFT_ACTIVE_DAYS + 1
            if t < day and (not best or day < best):
                best = day
        return best

    def wake_dates(self, record: CustomerRecord, today: date) -> Iterable[date]:
        m = record.risk.models
        if not m:
            return ()
        t = today.toordinal()
        days: set[int] = set()
        for entry in m["o"].values():
            if entry[3] == 0:
                days.add(entry[1] + self.late_days + 1)  # the label "late" falls due
            days.add(entry[1] + 1)  # overdue: the risk score moves
            days.add(entry[1] + OVERDUE_FULL_DAYS + 1)
        if m.get("dd"):
            days.add(m["dd"][0] + DRIFT_ACTIVE_DAYS + 1)
        return [date.fromordinal(day) for day in sorted(days) if day > t]

    # --- per-customer state ----------------------------------------------------------------

    def _new_customer(self) -> dict[str, Any]:
        g = self.portfolio_late_rate()
        # "c" (clean): the open invoices in "o" are exactly the ledger's and no cash sits on
        # account, so an invoice or a payment naming one invoice can be applied without a
        # full allocation. A new customer record may sit on an older ledger: not clean.
        return {"h": [0, 0, round(g, 4), 0, 0.0, round(self.portfolio_days_late(), 4)], "a": [0, 0.0, 0.0], "o": {},
                "c": 0, "ph": None, "dd": None, "r": None}

    def features(self, record: CustomerRecord, amount_base: float, terms_days: int, today: date,
                 as_of: str | None = None, exclude: str | None = None) -> list[float]:
        """The late-payment features of a new invoice, from what is known today.

        Reads the customer's labelled history and open invoices
        (``record.risk.models``, kept in step with the ledger) and the ledger's
        profile and disputes; ``exclude`` is the new invoice itself. ``as_of``
        (UTC ISO text) hides disputes recorded with a later timestamp.
        """
        m = record.risk.models or self._new_customer()
        ledger = record.ledger
        g = self.portfolio_late_rate()
        n, n_late, ewm_late, n_dl, sum_dl, ewm_dl = m["h"]
        late_rate = (n_late + HISTORY_PRIOR * g) / (n + HISTORY_PRIOR)
        days_late = (sum_dl + HISTORY_PRIOR * self.portfolio_days_late()) / (n_dl + HISTORY_PRIOR)
        count, mean, m2 = m["a"]
        log_amount = math.log(max(amount_base, 0.01))
        if count >= 2:
            sd = max(math.sqrt(m2 / (count - 1)), self.anomaly_min_sd)
            amount_z = _clip((log_amount - mean) / sd, -4.0, 4.0)
        else:
            amount_z = 0.0
        open_total = overdue_total = 0.0
        overdue_count = 0
        oldest = 0
        disputes = 0
        t = today.toordinal()
        invoices = ledger.invoices
        for invoice_id, entry in m["o"].items():
            if invoice_id == exclude:
                continue
            outstanding = entry[4]
            open_total += outstanding
            past_due = t - entry[1]
            if past_due > 0:
                overdue_total += outstanding
                overdue_count += 1
                if past_due > oldest:
                    oldest = past_due
            invoice = invoices.get(invoice_id)
            if invoice is not None and invoice.disputes:
                dispute = invoice.open_dispute()
                if dispute is not None and (as_of is None or dispute[0] <= as_of):
                    disputes += 1
        profile = ledger.profile
        limit = profile.credit_limit
        utilisation = _clip((open_total + amount_base) / float(limit), 0.0, 3.0) if limit else 0.0
        rating = profile.ratings[-1] if profile.ratings else None
        pd = float(rating[4]) if rating and rating[4] is not None else 0.0
        values = (
            _clip(_logit(late_rate), -4.0, 4.0),
            ewm_late - g,
            math.log1p(n) / 4,
            _clip(days_late / 30, -1.0, 4.0),
            _clip(ewm_dl / 30, -1.0, 4.0),
            amount_z / 2,
            (math.log10(max(amount_base, 0.01)) - 3) / 2,
            terms_days / 30 - 1,
            utilisation,
            overdue_total / open_total if open_total > 0 else 0.0,
            math.log1p(overdue_count) if overdue_count else 0.0,
            _clip(oldest / 30, 0.0, 6.0) if oldest else 0.0,
            _clip(pd * 10, 0.0, 5.0),
            math.log1p(disputes) if disputes else 0.0,
        )
        # round(v, 4) of a zero is that zero itself (sign included): only the others are rounded
        return [round(v, 4) if v else v for v in values]

    def predict(self, features: Sequence[float]) -> float:
        """P(late) for one feature vector (in :data:`FEATURES` order)."""
        return self.model.predict_proba_one(dict(zip(FEATURES, features)))[True]

    def _issue(self, record: CustomerRecord, m: dict[str, Any], event: Event,
               today: date) -> tuple[float | None, Allocation | None, DriftResult | None]:
        """invoice.issued: anomaly score, late-payment features and P(late), stored on the invoice."""
        invoice = record.ledger.invoices.get(event.invoice_id)  # type: ignore[attr-defined]
        if invoice is None or invoice.issue is None or invoice.issue[1] != event.event_id:
            return None, None, None  # a repeat of an issue the ledger already has: nothing new
        invoice_id = invoice.invoice_id
        alloc = None
        drift = None
        fast = (m["c"] and not self.exact and invoice_id not in m["o"]
                and not (invoice.adjustments or invoice.write_offs or invoice.resolutions))
        if not fast:
            # Other invoices may move (cash on account, held payments): bring them up to date first.
            alloc = allocate(record.ledger, self.ledger_config)
            drift = self._sync(record, m, alloc, skip=invoice_id)
        if invoice_id in m["o"]:
            return None, alloc, drift
        amount_base = float(to_base(invoice.amount, invoice.currency, self.ledger_config))
        anomaly = self._anomaly(m, amount_base)
        terms = (invoice.due_on - invoice.issued_on).days
        feats = self.features(record, amount_base, terms, today, as_of=invoice.issue[0], exclude=invoice_id)
        p = round(self.predict(feats), 6)
        m["o"][invoice_id] = [invoice.issued_on.toordinal(), invoice.due_on.toordinal(), p, 0,
                              round(amount_base, 2), 1, features_text(feats)]
        if alloc is not None:  # it may be settled already (a held payment)
            if self.exact:
                drift = self._sync(record, m, alloc) or drift
            else:
                # The sync above brought every other invoice up to date with this same allocation; a second
                # full sync would find them unchanged, so only this invoice's view is looked at.
                drift = self._sync_one(record, m, alloc, invoice_id) or drift
        return anomaly, alloc, drift

    def _anomaly(self, m: dict[str, Any], amount_base: float) -> float | None:
        """Score, then learn: the invoice against the customer's own amounts (log scale)."""
        count, mean, m2 = m["a"]
        x = math.log(max(amount_base, 0.01))
        score = None
        if count >= self.anomaly_min_history:
            sd = max(math.sqrt(m2 / (count - 1)), self.anomaly_min_sd)
            z = (x - mean) / sd
            score = round(z * z / (1 + z * z), 4) if z > 0 else 0.0
        count += 1
        delta = x - mean
        mean += delta / count
        m2 += delta * (x - mean)
        m["a"] = [count, round(mean, 6), round(m2, 6)]
        return score

    def _fast_balance(self, record: CustomerRecord, m: dict[str, Any], event: Event) -> tuple[bool, DriftResult | None]:
        """Apply a balance event to the open invoices without an allocation, when its effect is certain.

        Returns (handled, drift). Handled: a dispute rejected (nothing credited);
        on a clean customer, a payment naming an open invoice that had no cash
        yet, for at most its amount (it closes that invoice or pays part of it).
        """
        if event.type == "invoice.dispute_resolved":
            return event.credited_amount == 0, None  # type: ignore[attr-defined]
        if event.type != "payment.received" or not m["c"] or self.exact:
            return False, None
        entry = m["o"].get(event.invoice_id) if event.invoice_id else None  # type: ignore[attr-defined]
        payment = record.ledger.payments.get(event.payment_id)  # type: ignore[attr-defined]
        if entry is None or not entry[5] or payment is None or not payment.counts or payment.receipt[1] != event.event_id:
            return False, None
        invoice = record.ledger.invoices[event.invoice_id]  # type: ignore[attr-defined]
        config = self.ledger_config
        due = to_base(invoice.net_due, invoice.currency, config)
        cash = to_base(payment.receipt[2], payment.receipt[3], config)
        # The invoice had no cash yet and none sits on account: this payment alone decides.
        if cash < due:
            entry[4], entry[5] = round(float(due - cash), 2), 0
            return True, None
        if cash > due:
            return False, None  # the excess goes on account
        del m["o"][invoice.invoice_id]
        settled_on = max(payment.receipt[4], invoice.issued_on)
        return True, self._closed(m, entry, settled_on, invoice.due_on.toordinal())

    def _sync(self, record: CustomerRecord, m: dict[str, Any], alloc: Allocation, skip: str | None = None) -> DriftResult | None:
        """Bring the open invoices up to date with the allocation; label what closed."""
        open_entries: dict[str, list[Any]] = m["o"]
        drift = None
        kept = 0  # open invoices with an entry after this loop
        # The allocation's invoices in its order; closed ones without an entry change nothing, so only the
        # open ones and those with an entry are looked at (all of them in exact mode).
        views = alloc.invoices if self.exact else views_in_order(record.ledger, self.ledger_config, open_entries)
        for view in views:
            invoice_id = view.invoice_id
            if invoice_id == skip:
                continue
            outstanding = view.outstanding_base
            if outstanding > 0:
                full = int(outstanding == view.due_base)
                entry = open_entries.get(invoice_id)
                if entry is None:
                    open_entries[invoice_id] = [view.issued_on.toordinal(), view.due_on.toordinal(), None, 2,
                                                _base_float(outstanding), full, None]
                else:
                    entry[4], entry[5] = _base_float(outstanding), full
                kept += 1
                continue
            entry = open_entries.get(invoice_id)
            if entry is None:
                continue
            del open_entries[invoice_id]
            drift = self._gone(record, m, entry, view) or drift
        if kept != len(open_entries) - (skip in open_entries):
            listed = {view.invoice_id for view in views}
            for invoice_id in [iid for iid in open_entries if iid not in listed and iid != skip]:
                del open_entries[invoice_id]  # no longer in the ledger (retired, or its issue replaced)
        if self.exact:
            m["c"] = int(not pooled_cash(record.ledger, alloc))
        else:
            m["c"] = int(not cash_on_account(record.ledger, self.ledger_config))
        return drift

    def _sync_one(self, record: CustomerRecord, m: dict[str, Any], alloc: Allocation,
                  invoice_id: str) -> DriftResult | None:
        """:meth:`_sync` for one invoice, when all the others are already in step with ``alloc``."""
        for view in reversed(alloc.invoices):  # a new invoice is usually last in the allocation's order
            if view.invoice_id == invoice_id:
                break
        else:
            del m["o"][invoice_id]  # not in the ledger (cannot happen right after its issue)
            return None
        entry = m["o"][invoice_id]
        outstanding = view.outstanding_base
        if outstanding > 0:
            entry[4], entry[5] = _base_float(outstanding), int(outstanding == view.due_base)
            return None
        del m["o"][invoice_id]
        return self._gone(record, m, entry, view)

    def _gone(self, record: CustomerRecord, m: dict[str, Any], entry: list[Any], view: Any) -> DriftResult | None:
        """An open invoice's entry (already taken out) whose invoice closed: settled by cash, or written off."""
        if view.settled_on is not None:
            return self._closed(m, entry, view.settled_on, view.due_on.toordinal())
        if entry[3] == 0 and record.ledger.invoices[view.invoice_id].write_offs:
            self._label(m, entry, 1, "written_off")
        return None

    def _closed(self, m: dict[str, Any], entry: list[Any], settled_on: date, due: int) -> DriftResult | None:
        """An open invoice was settled by cash: its label (if still due), then the days-late statistics."""
        days_late = settled_on.toordinal() - due
        if entry[3] == 0:
            self._label(m, entry, int(days_late > self.late_days), "settled")
        elif entry[3] == 2:
            return None  # issued before the models watched this customer
        return self._settled(m, days_late)

    def _label(self, m: dict[str, Any], entry: list[Any], y: int, how: str) -> None:
        """Learn one label with the features and p stored at issuance."""
        issued, p = entry[0], entry[2]
        self.model.learn_one(dict(zip(FEATURES, stored_features(entry))), bool(y))
        self.roc.update(bool(y), p)
        self.log_loss.update(bool(y), p)
        self.predictions.append((issued, p, y))
        self.labels_by[how] += 1
        self.scored += 1
        self.scored_late += y
        self.n_labels += 1
        self.n_late += y
        h = m["h"]
        h[0] += 1
        h[1] += y
        h[2] = round((1 - EWM) * h[2] + EWM * y, 4)
        entry[3] = 1  # labelled; only its days late are still to come
        entry[6] = None

    def _settled(self, m: dict[str, Any], days_late: int) -> DriftResult | None:
        x = _clip(float(days_late), *DAYS_LATE_CLIP)
        self.n_settled += 1
        self.sum_days_late += x
        h = m["h"]
        h[3] += 1
        h[4] = round(h[4] + x, 2)
        h[5] = round((1 - EWM) * h[5] + EWM * x, 3)
        # Drift watches days beyond terms: paying early and paying on time are the same habit here.
        state, drift = page_hinkley_update(_ph_from_json(m["ph"]), max(x, 0.0), self.drift_delta, self.drift_threshold,
                                           self.drift_min_instances)
        m["ph"] = _ph_to_json(state)
        return drift

    # --- labels by the clock, and risk ------------------------------------------------------

    def _finish(self, record: CustomerRecord, m: dict[str, Any], today: date, signals: ModelSignals,
                alloc: Allocation | None, moved: bool = False) -> None:
        """Label what crossed ``late_days`` unpaid; then the risk score and each open invoice's P(late)."""
        t = today.toordinal()
        late_days = self.late_days
        weighted = total = overdue = unwatched = 0.0
        late_probability = signals.late_probability
        for invoice_id, entry in m["o"].items():
            past_due = t - entry[1]
            state = entry[3]
            outstanding = entry[4]
            total += outstanding
            if state == 0:
                if past_due > late_days:
                    self._label(m, entry, 1, "overdue")  # more than late_days past due, unpaid: late, now
                    p = 1.0
                else:
                    p = entry[2]
            elif state == 1:
                p = 1.0
            else:  # 2: issued before the models watched it, no p of its own
                unwatched += outstanding
                if past_due > 0:
                    overdue += outstanding if past_due >= OVERDUE_FULL_DAYS else outstanding * (past_due / OVERDUE_FULL_DAYS)
                continue
            late_probability[invoice_id] = p
            weighted += outstanding * p
            if past_due > 0:
                overdue += outstanding if past_due >= OVERDUE_FULL_DAYS else outstanding * (past_due / OVERDUE_FULL_DAYS)
        h = m["h"]
        # the customer's smoothed late rate (portfolio_late_rate inlined)
        customer_rate = (h[1] + HISTORY_PRIOR * ((self.n_late + PORTFOLIO_PRIOR * self.prior_late_rate)
                                                 / (self.n_labels + PORTFOLIO_PRIOR))) / (h[0] + HISTORY_PRIOR)
        if total > 0:
            weighted += unwatched * customer_rate
            safe = (1 - RISK_WEIGHT_LATE * (weighted / total)) * (1 - RISK_WEIGHT_OVERDUE * (overdue / total))
        else:
            safe = 1 - RISK_WEIGHT_LATE * customer_rate  # (× (1 - overdue weight × 0) = × 1.0, exact)
        ledger = record.ledger
        profile = ledger.profile
        ratings = profile.ratings
        if ratings and ratings[-1][4] is not None:
            safe *= 1 - float(ratings[-1][4])
        dd = m.get("dd")
        if dd and t - dd[0] <= DRIFT_ACTIVE_DAYS:
            safe *= 1 - RISK_WEIGHT_DRIFT
        if ledger.promises:
            broken = self._broken_promises(record, m, today, alloc, moved)
            if broken:
                safe *= (1 - RISK_WEIGHT_BROKEN_PROMISE) ** min(broken, 5)
        elif "bp" in m:
            del m["bp"]
        for ts, _, kind, _ in profile.legal_events:
            if (t - date.fromisoformat(ts[:10]).toordinal()) <= LEGAL_ACTIVE_DAYS:
                safe *= 1 - LEGAL_WEIGHT.get(kind, 0.05)
        risk = 1 - safe
        risk = round(0.0 if risk < 0.0 else 1.0 if risk > 1.0 else risk, 4)
        r = m.get("r")
        previous = r[0] if r else None
        m["r"] = [risk, previous]
        signals.risk_score, signals.previous_risk_score = risk, previous

    def _broken_promises(self, record: CustomerRecord, m: dict[str, Any], today: date,
                         alloc: Allocation | None, moved: bool) -> int:
        """Promises past their deadline and not kept (the ledger's rule), recounted once a day
        or when cash or promises moved; 0 without any promise past its deadline."""
        promises = record.ledger.promises
        if not promises:
            m.pop("bp", None)
            return 0
        # promised_on + grace < today, with the grace taken off today once instead of added to each promise
        deadline_before = today - timedelta(days=self.ledger_config.promise_grace_days)
        for promise in promises.values():
            if promise.promised_on < deadline_before:
                break
        else:
            return 0
        cached = m.get("bp")
        if cached is not None and cached[1] == today.toordinal() and not moved:
            return cached[0]
        from pipeline.ledger import figures, promise_status  # the ledger's own rule for a kept promise

        if self.exact:
            if alloc is None:
                alloc = allocate(record.ledger, self.ledger_config)
            _, broken = promise_status(record.ledger, alloc, today, self.ledger_config)
        else:  # the same rule, worked out once for the models and the broken_promise detector
            broken = figures(record.ledger, today, self.ledger_config).promises_broken
        m["bp"] = [len(broken), today.toordinal()]
        return len(broken)

    # --- history ---------------------------------------------------------------------------

    def warm_start(self, events: Iterable[Event | dict[str, Any]] | str | Path) -> int:
        """Train the late-payment model on past events; returns the labels learned.

        The events (validated objects, JSON dicts, or a JSONL file; invalid ones
        are skipped) are replayed in time order through a private ledger with a
        daily clock, exactly as live (score, then learn). The customers' state
        from that replay is discarded, and the metrics start afresh, so that
        what :meth:`metrics` reports afterwards is live performance only.
        """
        before = self.n_labels
        replay(self, _events(events))
        learned = self.n_labels - before
        self._fresh_metrics()
        return learned


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _events(source: Iterable[Event | dict[str, Any]] | str | Path) -> list[Event]:
    """Validated events in time order (file order breaks ties); invalid ones are left out."""
    if isinstance(source, (str, Path)):
        with Path(source).open("rb") as handle:
            raw: Iterable[Any] = [line for line in handle if line.strip()]
    else:
        raw = source
    events = []
    for item in raw:
        if isinstance(item, Event):
            events.append(item)
            continue
        try:
            events.append(parse_event(item) if isinstance(item, bytes) else validate_event(item))
        except InvalidEvent:
            continue
    events.sort(key=lambda e: e.occurred_at)
    return events


def replay(models: OnlineModels, events: Iterable[Event], engine: Any = None) -> dict[str, Any]:
    """Feed events in time order, with a tick for every day a customer asked to be woken.

    Without ``engine`` only the ledger and the models run (``warm_start``);
    with a :class:`~pipeline.engine.RiskEngine` everything does and the alert
    updates are collected. Returns ``{"records": …, "alerts": […], "events": n}``.
    Events must be sorted by ``occurred_at``.
    """
    from pipeline.engine import CustomerRecord

    records: dict[str, CustomerRecord] = {}
    scheduled: dict[str, date] = {}
    wakes: list[tuple[date, str]] = []
    alerts: list[Any] = []
    count = 0
    config = models.ledger_config if engine is None else engine.ledger_config

    def schedule(record: CustomerRecord, today: date) -> None:
        if engine is not None:
            wake = engine.next_wake(record, today)
        else:  # the first of models.wake_dates(record, today)
            first = models.first_wake(record, today.toordinal())
            wake = date.fromordinal(first) if first else None
        customer_id = record.customer_id
        if wake is None:
            scheduled.pop(customer_id, None)
        elif scheduled.get(customer_id) != wake:
            scheduled[customer_id] = wake
            heapq.heappush(wakes, (wake, customer_id))

    def tick_until(day: date) -> None:
        while wakes and wakes[0][0] <= day:
            wake, customer_id = heapq.heappop(wakes)
            if scheduled.get(customer_id) != wake:
                continue  # superseded by a later schedule
            del scheduled[customer_id]
            record = records[customer_id]
            if engine is not None:
                alerts.extend(engine.on_tick(record, datetime.combine(wake, datetime.min.time(), tzinfo=timezone.utc)))
            else:
                models.on_tick(record, wake)
            schedule(record, wake)

    for event in events:
        now = event.occurred_at.astimezone(timezone.utc)
        today = now.date()
        tick_until(today)
        record = records.get(event.customer_id)
        count += 1
        if engine is not None:
            try:
                record, updates = engine.on_event(record, event, now)
            except LedgerRejected:
                continue
            alerts.extend(updates)
        else:
            if record is None:
                record = CustomerRecord(new_state(event.customer_id))
            if record.ledger.has_seen(event.event_id):
                continue
            try:
                apply(record.ledger, event, config)
            except LedgerRejected:
                continue
            models.on_event(record, event, today)
        records[event.customer_id] = record
        schedule(record, today)
    return {"records": records, "alerts": alerts, "events": count}


__all__ = ["FEATURES", "OnlineModels", "auc_by_issue_date", "page_hinkley_update", "replay", "roc_auc"]
