"""What-if: the same history through two threshold sets, side by side.

``creditwatch backtest FILE --config A --compare B`` replays the file twice
through the same engine code and reports, per detector and for all detectors
together: alerts raised, alerts per customer-month, written-off customers
caught, precision and recall against ``invoice.written_off`` (the ground
truth), the median lead time from the first warning to the write-off, and —
when reviewers have judged alerts in the store — the reviewer-confirmed
precision. With verdicts, the reviewer-feedback model (``pipeline.feedback``)
also learns them as the worker would — each verdict known ``review_days``
after its alert was raised — and its progressive ROC AUC and log loss on
those verdicts are reported per side. ``--report FILE.html`` writes the table with a chart of alert
volume per week (inline SVG: no JavaScript, no network).
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

from detectors.config import Thresholds
from pipeline.backtest import BacktestResult, build_engine, run_backtest
from pipeline.config import LedgerConfig
from pipeline.simulate import evaluate, ground_truth

ALL = "(all detectors)"


@dataclass
class Side:
    label: str
    result: BacktestResult
    rows: dict[str, dict[str, Any]]
    weekly: dict[date, int]


def _day(value: str) -> date:
    return datetime.fromisoformat(value).date()


def _customer_months(lines: list[bytes], result: BacktestResult) -> float:
    days = [record.ledger.watermark for record in result.records.values() if record.ledger.watermark]
    if not days:
        return 0.0
    first = min(_day(update.alert["raised_at"]) for update in result.updates) if result.updates else None
    span = (max(_day(d) for d in days) - (first or _day(min(days)))).days or 1
    return len(result.records) * span / 30.44


def _rows(result: BacktestResult, truth: Mapping[str, date], customer_months: float,
          feedback: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    revisions = [update.alert for update in result.updates]
    by_detector: dict[str, list[dict[str, Any]]] = {}
    for alert in revisions:
        by_detector.setdefault(alert["detector"], []).append(alert)
    rows: dict[str, dict[str, Any]] = {}
    for name, alerts in [(ALL, revisions), *sorted(by_detector.items())]:
        quality = evaluate(alerts, truth)
        ids = {alert["alert_id"] for alert in alerts}
        row = {
            "alerts": len(ids),
            "alerts_per_customer_month": round(len(ids) / customer_months, 4) if customer_months else None,
            "customers_caught": quality.caught,
            "customers_flagged": quality.flagged,
            "precision": _r(quality.precision),
            "recall": _r(quality.recall),
            "median_lead_days": quality.median_lead_days,
        }
        if feedback:
            judged = [feedback[alert_id] for alert_id in ids if alert_id in feedback]
            confirmed = sum(1 for verdict in judged if verdict == "confirmed")
            row["reviewed"] = len(judged)
            row["reviewer_precision"] = _r(confirmed / len(judged)) if judged else None
        rows[name] = row
    return rows


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _weekly(result: BacktestResult) -> dict[date, int]:
    weeks: Counter[date] = Counter()
    for alert_id, raised_at in result.first_raised.items():
        day = _day(raised_at)
        weeks[day - timedelta(days=day.weekday())] += 1
    return dict(sorted(weeks.items()))


def run_side(label: str, lines: list[bytes], thresholds: Thresholds, ledger: LedgerConfig,
             truth: Mapping[str, date], feedback: Mapping[str, str] | None, with_models: bool = True,
             review_days: int = 7) -> Side:
    from pipeline.feedback import FeedbackReplay

    replay = FeedbackReplay(feedback, review_days=review_days) if feedback else None
    result = run_backtest(lines, build_engine(thresholds, ledger, with_models=with_models), feedback=replay)
    return Side(label, result, _rows(result, truth, _customer_months(lines, result), feedback), _weekly(result))


def compare(lines: list[bytes], a: Thresholds, b: Thresholds, ledger: LedgerConfig,
            feedback: Mapping[str, str] | None = None, with_models: bool = True,
            review_days: int = 7) -> tuple[Side, Side, dict[str, Any]]:
    from pipeline.events import InvalidEvent, parse_event

    events = []
    for raw in lines:
        try:
            events.append(parse_event(raw))
        except InvalidEvent:
            continue
    truth = ground_truth(events)
    left = run_side(a.source, lines, a, ledger, truth, feedback, with_models, review_days)
    right = run_side(b.source, lines, b, ledger, truth, feedback, with_models, review_days)
    detectors = sorted(set(left.rows) | set(right.rows), key=lambda name: (name != ALL, name))
    report = {
        "events": left.result.events,
        "written_off_customers": len(truth),
        "a": {"config": a.source, "by_detector": left.rows,
              **({"feedback_model": left.result.feedback} if left.result.feedback is not None else {})},
        "b": {"config": b.source, "by_detector": right.rows,
              **({"feedback_model": right.result.feedback} if right.result.feedback is not None else {})},
        "detectors": detectors,
        "weekly_alerts": {
            "a": {day.isoformat(): count for day, count in left.weekly.items()},
            "b": {day.isoformat(): count for day, count in right.weekly.items()},
        },
    }
    return left, right, report


def feedback_from_store(store: Any) -> dict[str, str]:
    """alert_id → "confirmed" | "false_positive", from reviewers' verdicts in the store (``resolved`` = confirmed)."""
    verdicts = getattr(store, "feedback_labels", None)
    if verdicts is not None:
        return dict(verdicts())
    labels: dict[str, str] = {}
    for status, verdict in (("false_positive", "false_positive"), ("resolved", "confirmed")):
        for alert in store.list_alerts(status=status, limit=None):
            labels[alert["alert_id"]] = verdict
    return labels


COLUMNS = [
    ("alerts", "alerts"), ("alerts_per_customer_month", "per cust-month"), ("customers_caught", "caught"),
    ("precision", "precision"), ("recall", "recall"), ("median_lead_days", "median lead (days)"),
    ("reviewer_precision", "reviewer precision"),
]


def format_text(report: Mapping[str, Any]) -> str:
    lines = [f"{report['events']:,} events, {report['written_off_customers']} customers written off",
             f"A = {report['a']['config']}   B = {report['b']['config']}", ""]
    header = f"{'detector':<22}" + "".join(f"{title:>22}" for _, title in COLUMNS if _has(report, _))
    lines.append(header)
    for name in report["detectors"]:
        a = report["a"]["by_detector"].get(name, {})
        b = report["b"]["by_detector"].get(name, {})
        cells = "".join(f"{_cell(a.get(key)) + ' → ' + _cell(b.get(key)):>22}" for key, _ in COLUMNS if _has(report, key))
        lines.append(f"{name:<22}{cells}")
    for side in ("a", "b"):
        model = report[side].get("feedback_model")
        if model:
            lines.append(f"reviewer-feedback model ({side.upper()}): {model['verdicts_learned']} verdicts learned, "
                         f"progressive ROC AUC {_cell(model['roc_auc'])}, log loss {_cell(model['log_loss'])}")
    return "\n".join(lines)


def _has(report: Mapping[str, Any], key: str) -> bool:
    return key != "reviewer_precision" or any(
        "reviewer_precision" in row for side in ("a", "b") for row in report[side]["by_detector"].values())


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_html(report: Mapping[str, Any], path: Path) -> None:
    weeks = sorted(set(report["weekly_alerts"]["a"]) | set(report["weekly_alerts"]["b"]))
    series = {side: [report["weekly_alerts"][side].get(week, 0) for week in weeks] for side in ("a", "b")}
    width, height, pad = 900, 260, 40
    top = max([1, *series["a"], *series["b"]])

    def points(values: list[int]) -> str:
        if len(values) == 1:
            values = values * 2
        step = (width - 2 * pad) / max(len(values) - 1, 1)
        return " ".join(f"{pad + i * step:.1f},{height - pad - v / top * (height - 2 * pad):.1f}" for i, v in enumerate(values))

    svg = (f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="alerts per week, A and B">'
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
           f'<text x="{pad - 6}" y="{pad}" text-anchor="end" font-size="11">{top}</text>'
           f'<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{points(series["a"])}"/>'
           f'<polyline fill="none" stroke="#d4621a" stroke-width="2" stroke-dasharray="5 3" points="{points(series["b"])}"/>'
           + (f'<text x="{pad}" y="{height - 12}" font-size="11">{weeks[0]}</text>'
              f'<text x="{width - pad}" y="{height - 12}" font-size="11" text-anchor="end">{weeks[-1]}</text>' if weeks else "")
           + "</svg>")
    rows = []
    for name in report["detectors"]:
        a = report["a"]["by_detector"].get(name, {})
        b = report["b"]["by_detector"].get(name, {})
        cells = "".join(f"<td>{html.escape(_cell(a.get(key)))}</td><td>{html.escape(_cell(b.get(key)))}</td>"
                        for key, _ in COLUMNS if _has(report, key))
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    head = "".join(f'<th colspan="2">{html.escape(title)}</th>' for key, title in COLUMNS if _has(report, key))
    sub = "".join("<th>A</th><th>B</th>" for key, _ in COLUMNS if _has(report, key))
    page = f"""<!doctype html><html lang="en"><meta charset="utf-8"><title>creditwatch what-if</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}tbody th{{text-align:left}}</style>
<h1>What-if: A vs B</h1>
<p>{report['events']:,} events, {report['written_off_customers']} customers written off (ground truth).<br>
A = {html.escape(str(report['a']['config']))} (solid) · B = {html.escape(str(report['b']['config']))} (dashed)</p>
<h2>Alerts per week</h2>{svg}
<h2>By detector</h2><table><thead><tr><th></th>{head}</tr><tr><th></th>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table>
</html>"""
    path.write_text(page)
