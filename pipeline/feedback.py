"""Reviewer feedback: learn P(a reviewer confirms this alert) from their verdicts.

**Verdicts.** A reviewer's verdict is a status change, by a person, to one of
the two final statuses (``sinks/store.py``, :data:`VERDICTS`):

* ``resolved`` → **confirmed**: the alert was a real problem and was acted on
  (this includes approving a recommended credit limit, which resolves it);
* ``false_positive`` → **false positive**: it should not have been raised.

Reopening withdraws nothing already learned; resolving or marking the alert
again later is a new verdict, learned as the later word on it (an online
model weighs recent verdicts more). The engine's own reopening (the episode
worsened) is no verdict.

**Features at raise time.** When the worker stores an alert (each revision),
it computes the alert's features from what is known at that moment — the
detector, the severity, the score, and the customer's figures from its
position (utilisation, overdue share, DSO, days beyond terms, probability of
default, open disputes, broken promises, exposure, the risk model's score) —
each figure also by scorecard band (:data:`BANDS`), overall and per detector,
so that "detector X on customers with low utilisation is noise" is learnable. They are kept with the alert
(``alert["feedback"]``, stored in the ``alerts.feedback`` column), so a
verdict given days later is learned on exactly what the model saw.

**The model.** A river logistic regression (AdaGrad: frequent features such
as the bands everyone falls in take smaller steps, so one verdict does not
swing the estimate) on hand-scaled features (no online scaler, so a fresh
model and a restored one mean the same), starting at the prior
``prior_confirm_rate`` (the intercept) with no weights: until it has
learned ``min_verdicts`` verdicts it gives no estimate at all. Score before
learn: each verdict is first predicted, then learned, so :meth:`metrics` is
progressive validation (ROC AUC, log loss) on verdicts the model had not seen.

**Each verdict once.** Verdicts are history rows with a growing id. The
model keeps a watermark (every history id up to it is dealt with) and the
ids above it it has learned already; both are part of :meth:`snapshot`, so a
restored model neither learns a verdict twice nor skips one. A gap in the
ids (a transaction that allocated an id but has not committed yet, which
PostgreSQL allows) holds the watermark back until it fills or has stayed a
gap for ``settle_s`` seconds (a rolled-back transaction).

>>> model = FeedbackModel(min_verdicts=2)
>>> x = model.features({"detector": "dso_rising", "severity": "warning", "score": None}, {"utilisation": "0.1"})
>>> model.estimate(x) is None
True
>>> for _ in range(30):
...     _ = model.learn(x, confirmed=False)
>>> model.estimate(x) < 0.2
True
"""

from __future__ import annotations

import math
import pickle
import time
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pipeline.alerts import finite_float
from pipeline.scoring import clip as _clip, logit as _logit, roc_auc

if TYPE_CHECKING:
    from river import optim

#: The status a verdict moves an alert to → the label it gives.
VERDICTS: dict[str, str] = {"resolved": "confirmed", "false_positive": "false_positive"}
#: The reason code of the estimate on an alert.
REASON_CODE = "confirm_probability"
#: The customer's figures (names as in ``pipeline.ledger.Position.to_json``), hand-scaled by :func:`_figures`.
FIGURES = ("utilisation", "over_limit", "overdue_share", "dso", "days_beyond_terms", "pd", "disputes",
           "broken_promises", "exposure", "risk")
SNAPSHOT_VERSION = 1


def _optimizer(name: str, learning_rate: float) -> optim.base.Optimizer:
    from river import optim

    return {"sgd": optim.SGD, "adagrad": optim.AdaGrad}[name](learning_rate)


#: The fields of a position (``Position.to_json``, plus the worker's ``risk_score``) that the features read: a
#: caller may pass only these (the worker does, for each alerted customer, so as not to write out its invoices).
POSITION_FIELDS = ("utilisation", "exposure", "overdue", "dso_days", "days_beyond_terms_recent", "days_beyond_terms",
                   "probability_of_default", "open_disputes", "promises_broken", "risk_score")


def _figures(position: Mapping[str, Any] | None, risk: float | None) -> dict[str, float]:
    """The customer's figures, each scaled to about [-1, 3]; absent figures are left out (weight 0)."""
    pos = position or {}
    if risk is None:
        risk = finite_float(pos.get("risk_score"))  # the worker's positions carry the model's risk score
    out: dict[str, float] = {}
    utilisation = finite_float(pos.get("utilisation"))
    if utilisation is not None:
        out["utilisation"] = _clip(utilisation, 0.0, 3.0)
        out["over_limit"] = 1.0 if utilisation > 1.0 else 0.0
    exposure = finite_float(pos.get("exposure"))
    overdue = finite_float(pos.get("overdue"))
    if exposure is not None and exposure > 0 and overdue is not None:
        out["overdue_share"] = _clip(overdue / exposure, 0.0, 1.0)
    if exposure is not None:
        out["exposure"] = _clip((math.log10(max(exposure, 0.0) + 1.0) - 4.0) / 2.0, -2.0, 2.0)
    dso = finite_float(pos.get("dso_days"))
    if dso is not None:
        out["dso"] = _clip(dso / 60.0, 0.0, 4.0)
    beyond = finite_float(pos.get("days_beyond_terms_recent"))
    if beyond is None:
        beyond = finite_float(pos.get("days_beyond_terms"))
    if beyond is not None:
        out["days_beyond_terms"] = _clip(beyond / 30.0, -1.0, 4.0)
    pd = finite_float(pos.get("probability_of_default"))
    if pd is not None:
        out["pd"] = _clip(pd * 10.0, 0.0, 5.0)
    disputes = pos.get("open_disputes")
    if isinstance(disputes, list):
        out["disputes"] = math.log1p(len(disputes))
    broken = pos.get("promises_broken")
    if isinstance(broken, list):
        out["broken_promises"] = math.log1p(len(broken))
    if risk is not None:
        out["risk"] = _clip(float(risk), 0.0, 1.0)
    return out


#: Scorecard bands of the figures: (name, upper bounds); a figure falls into the first band whose bound exceeds it.
BANDS: dict[str, tuple[float, ...]] = {
    "utilisation": (0.5, 0.8, 1.0),
    "overdue_share": (0.001, 0.25, 0.5),
    "dso": (0.5, 1.0, 1.5),  # 30, 60, 90 days
    "days_beyond_terms": (0.001, 0.5, 1.0),  # on time, up to 15, up to 30, more days
    "pd": (0.1, 0.5),  # 1 %, 5 %
    "risk": (0.2, 0.5),
    "disputes": (0.001,),
    "broken_promises": (0.001,),
}


def _band(name: str, value: float) -> str:
    bounds = BANDS[name]
    for i, bound in enumerate(bounds):
        if value < bound:
            return f"{name}#{i}"
    return f"{name}#{len(bounds)}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One reviewer verdict as the store gives it (see ``AlertStore.verdicts_after``)."""

    id: int
    alert_id: str
    confirmed: bool
    at: str | None
    by: str
    alert: Mapping[str, Any]


class FeedbackModel:
    """P(confirmed | the alert's features at raise time), learned online from reviewers' verdicts."""

    def __init__(self, *, prior_confirm_rate: float = 0.5, learning_rate: float = 0.2, l2: float = 0.0005,
                 min_verdicts: int = 20, settle_s: float = 30.0, keep_predictions: int = 10_000,
                 optimizer: str = "adagrad"):
        self.prior_confirm_rate = prior_confirm_rate
        self.learning_rate = learning_rate
        self.l2 = l2
        self.min_verdicts = min_verdicts
        self.settle_s = settle_s
        # river (and scipy under it) only where a model is made: the store writer and the outbox relay import
        # this module for POSITION_FIELDS and would pay for it at every start.
        from river import linear_model

        self.model = linear_model.LogisticRegression(
            optimizer=_optimizer(optimizer, learning_rate), l2=l2, intercept_init=_logit(prior_confirm_rate),
            intercept_lr=learning_rate,
        )
        self.learned = 0
        self.confirmed = 0
        self.by_detector: dict[str, list[int]] = {}  # detector → [verdicts, confirmed]
        self.skipped = 0  # verdicts on alerts stored without features (before this model existed)
        self.predictions: deque[tuple[float, int]] = deque(maxlen=keep_predictions)
        self.log_loss_sum = 0.0
        # Following the store: every history id <= watermark is dealt with; `seen` are verdict ids above it
        # learned already; `gaps` (not snapshotted) remembers since when (monotonic) an id range was missing.
        self.watermark = 0
        self.seen: set[int] = set()
        self.gaps: dict[tuple[int, int], float] = {}

    # --- features and estimates ---------------------------------------------------

    @staticmethod
    def features(alert: Mapping[str, Any], position: Mapping[str, Any] | None = None,
                 risk: float | None = None) -> dict[str, float]:
        """The alert's features: detector, severity, score, the customer's figures and detector × figure."""
        detector = str(alert.get("detector"))
        x: dict[str, float] = {f"detector={detector}": 1.0, f"severity={alert.get('severity')}": 1.0}
        score = finite_float(alert.get("score"))
        if score is not None:
            x["score"] = _clip(score, -1.0, 3.0)
            x[f"{detector}*score"] = x["score"]
        for name, value in _figures(position, risk).items():
            x[name] = value  # linear in the figure, for every detector alike
            if name in BANDS:  # and by band, overall and per detector: "X on customers in this band"
                band = _band(name, value)
                x[band] = 1.0
                x[f"{detector}*{band}"] = 1.0
        return {name: round(value, 4) for name, value in x.items()}

    @property
    def ready(self) -> bool:
        return self.learned >= self.min_verdicts

    def predict(self, x: Mapping[str, float]) -> float:
        """P(confirmed) whatever the number of verdicts learned (the prior at first)."""
        return float(self.model.predict_proba_one(dict(x))[True])

    def estimate(self, x: Mapping[str, float]) -> float | None:
        """P(confirmed), or None until ``min_verdicts`` verdicts are learned (no effect before that)."""
        return round(self.predict(x), 4) if self.ready else None

    def annotate(self, alert: dict[str, Any], position: Mapping[str, Any] | None = None,
                 risk: float | None = None) -> dict[str, Any]:
        """Put the features and the estimate on ``alert`` (``alert["feedback"]``); add a reason once there is one.

        The reason (code ``confirm_probability``) goes last, so the detector's own reasons come first.
        """
        x = self.features(alert, position, risk)
        p = self.estimate(x)
        alert["feedback"] = {"confirm_probability": p, "verdicts_learned": self.learned, "features": x}
        alert["confirm_probability"] = p
        reasons = [r for r in alert.get("reasons") or [] if r.get("code") != REASON_CODE]
        if p is not None:
            reasons.append({
                "code": REASON_CODE,
                "message": f"Reviewers would confirm an alert like this with probability {p:.0%} "
                           f"(learned from {self.learned:,} verdicts)",
                "value": p, "threshold": None,
            })
        alert["reasons"] = reasons
        return alert

    # --- learning ---------------------------------------------------------------------

    def learn(self, x: Mapping[str, float], confirmed: bool, detector: str | None = None) -> float:
        """Score, then learn one verdict; returns the probability it had before learning it."""
        p = self.predict(x)
        y = 1 if confirmed else 0
        self.predictions.append((p, y))
        q = min(max(p, 1e-6), 1 - 1e-6)
        self.log_loss_sum += -math.log(q if y else 1 - q)
        self.model.learn_one(dict(x), bool(confirmed))
        self.learned += 1
        self.confirmed += y
        if detector is None:
            detector = next((k.split("=", 1)[1] for k in x if k.startswith("detector=")), "?")
        counts = self.by_detector.setdefault(detector, [0, 0])
        counts[0] += 1
        counts[1] += y
        return p

    def learn_verdict(self, verdict: Verdict) -> bool:
        """Learn one verdict on the features stored with its alert; False if the alert has none."""
        stored = (verdict.alert.get("feedback") or {}).get("features")
        if not stored:
            self.skipped += 1
            return False
        self.learn(stored, verdict.confirmed, str(verdict.alert.get("detector")))
        return True

    def take(self, history_ids: Iterable[int], verdicts: Iterable[Verdict], now: float | None = None) -> int:
        """Learn the verdicts not learned yet from one page of the store; move the watermark. Returns how many."""
        now = time.monotonic() if now is None else now
        learned = 0
        for verdict in verdicts:
            if verdict.id <= self.watermark or verdict.id in self.seen:
                continue
            self.seen.add(verdict.id)
            learned += self.learn_verdict(verdict)
        watermark = self.watermark
        for history_id in sorted(history_ids):
            if history_id <= watermark:
                continue
            if history_id > watermark + 1:
                gap = (watermark + 1, history_id - 1)
                since = self.gaps.setdefault(gap, now)
                if now - since < self.settle_s:
                    break  # maybe a transaction still in flight: wait for it
                self.gaps.pop(gap, None)
            watermark = history_id
        self.watermark = watermark
        self.seen = {i for i in self.seen if i > watermark}
        self.gaps = {gap: since for gap, since in self.gaps.items() if gap[0] > watermark}
        return learned

    def follow(self, store: Any, page: int = 1000, now: float | None = None) -> int:
        """Learn every new verdict in ``store`` (page by page); returns how many were learned."""
        total = 0
        while True:
            before = self.watermark
            ids, verdicts = store.verdicts_after(self.watermark, page)
            total += self.take(ids, [Verdict(**v) for v in verdicts], now)
            if len(ids) < page or self.watermark == before:
                return total

    # --- state ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Model, counters, metrics and the store watermark as bytes (the worker's checkpoint)."""
        state = {key: value for key, value in self.__dict__.items() if key != "gaps"}
        return pickle.dumps({"version": SNAPSHOT_VERSION, "state": state}, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, raw: bytes) -> None:
        data = pickle.loads(raw)
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown feedback model snapshot version {data.get('version')!r}")
        self.__dict__.update(data["state"])
        self.gaps = {}

    def metrics(self) -> dict[str, Any]:
        """Progressive: every verdict was predicted before it was learned."""
        scores = [p for p, _ in self.predictions]
        labels = [y for _, y in self.predictions]
        auc = roc_auc(scores, labels) if scores else None
        return {
            "verdicts_learned": self.learned,
            "confirmed": self.confirmed,
            "confirm_rate": round(self.confirmed / self.learned, 4) if self.learned else None,
            "roc_auc": None if auc is None else round(auc, 4),
            "log_loss": round(self.log_loss_sum / self.learned, 4) if self.learned else None,
            "skipped_without_features": self.skipped,
            "ready": self.ready,
            "watermark": self.watermark,
            "by_detector": {name: {"verdicts": n, "confirmed": c} for name, (n, c) in sorted(self.by_detector.items())},
        }


# --- offline replay -----------------------------------------------------------------


def load_verdicts(source: Any) -> dict[str, str]:
    """alert_id → "confirmed" | "false_positive" from a store or a JSON file.

    The file is an object ``{alert_id: "confirmed" | "false_positive" | "resolved"}`` or a list of alerts
    with their ``status`` (``creditwatch alerts list --json``): ``resolved`` counts as confirmed.
    """
    if hasattr(source, "feedback_labels"):
        return dict(source.feedback_labels())
    import json
    from pathlib import Path

    data = json.loads(Path(source).read_text())
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):  # e.g. `creditwatch alerts list --json`: alerts not judged (yet) are left out
        items = [(row["alert_id"], row.get("verdict") or VERDICTS[row["status"]]) for row in data
                 if isinstance(row, dict) and "alert_id" in row and (row.get("verdict") or row.get("status") in VERDICTS)]
    else:
        raise ValueError(f"{source}: expected a JSON object (alert_id → verdict) or a list of alerts")
    labels: dict[str, str] = {}
    for alert_id, verdict in items:
        verdict = VERDICTS.get(verdict, verdict)
        if verdict not in ("confirmed", "false_positive"):
            raise ValueError(f"{source}: alert {alert_id}: verdict {verdict!r} is neither confirmed nor false_positive")
        labels[str(alert_id)] = verdict
    return labels


class FeedbackReplay:
    """The same learning in a backtest: each verdict becomes known ``review_days`` after its alert was raised.

    The backtest annotates each alert revision as the worker does (features,
    estimate) and learns a verdict when the replay clock reaches its review
    day, on the features of the alert's latest revision before then — so no
    alert is ever scored with its own verdict known.
    """

    def __init__(self, verdicts: Mapping[str, str], model: FeedbackModel | None = None, review_days: int = 7):
        self.verdicts = dict(verdicts)
        self.model = model or FeedbackModel()
        self.review = timedelta(days=review_days)
        self.latest: dict[str, dict[str, Any]] = {}
        self.due: list[tuple[date, str]] = []
        self.scheduled: set[str] = set()

    def annotate(self, alert: dict[str, Any], position: Mapping[str, Any] | None, risk: float | None) -> None:
        self.model.annotate(alert, position, risk)
        alert_id = alert["alert_id"]
        self.latest[alert_id] = alert
        if alert_id in self.verdicts and alert_id not in self.scheduled:
            import heapq

            self.scheduled.add(alert_id)
            raised = datetime.fromisoformat(alert["raised_at"]).date()
            heapq.heappush(self.due, (raised + self.review, alert_id))

    def learn_until(self, today: date) -> int:
        import heapq

        learned = 0
        while self.due and self.due[0][0] <= today:
            _, alert_id = heapq.heappop(self.due)
            alert = self.latest[alert_id]
            self.model.learn(alert["feedback"]["features"], self.verdicts[alert_id] == "confirmed", alert["detector"])
            learned += 1
        return learned


__all__ = ["FeedbackModel", "FeedbackReplay", "Verdict", "VERDICTS", "REASON_CODE", "load_verdicts"]
