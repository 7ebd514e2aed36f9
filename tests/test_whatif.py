"""What-if backtests: two threshold sets over the same history, judged against write-offs."""

from __future__ import annotations

import json
import subprocess
import sys

from detectors.config import Thresholds, parse_thresholds
from pipeline.builders import invoice, make, payment, register
from pipeline.config import LedgerConfig
from pipeline.whatif import ALL, compare


def _lines(events) -> list[bytes]:
    return [event.model_dump_json().encode() for event in events]


def _history():
    # Doomed: insolvency filing on 03-01, written off on 05-01. Healthy: a bank change, pays on time.
    doomed = [register(customer="D1"), invoice("D-1", 5000, customer="D1"),
              make("customer.legal_event", "2026-03-01", customer="D1", kind="insolvency_filing"),
              make("invoice.written_off", "2026-05-01", customer="D1", invoice_id="D-1", amount="5000.00")]
    healthy = [register(customer="H1"), invoice("H-1", 1000, customer="H1"),
               payment("HP-1", 1000, "2026-02-05", invoice_id="H-1", customer="H1"),
               make("customer.legal_event", "2026-02-10", customer="H1", kind="court_judgment")]
    return doomed + healthy


def test_compare_reports_recall_precision_and_lead_time_per_detector_for_both_sides():
    without_legal = parse_thresholds({"legal_event": {"enabled": False}}, "b.toml")
    left, right, report = compare(_lines(_history()), Thresholds(), without_legal, LedgerConfig(), with_models=False)
    legal = report["a"]["by_detector"]["legal_event"]
    # Insolvency (critical) before the write-off caught D1 61 days ahead; the judgment (warning) flagged healthy H1.
    assert legal["customers_caught"] == 1 and legal["recall"] == 1.0
    assert legal["precision"] == 0.5
    assert legal["median_lead_days"] == 61
    assert "legal_event" not in report["b"]["by_detector"]
    assert report["b"]["by_detector"][ALL]["customers_caught"] <= report["a"]["by_detector"][ALL]["customers_caught"]
    assert report["written_off_customers"] == 1
    assert sum(report["weekly_alerts"]["a"].values()) == report["a"]["by_detector"][ALL]["alerts"]


def test_reviewer_verdicts_give_reviewer_confirmed_precision():
    events = _history()
    _, _, plain = compare(_lines(events), Thresholds(), Thresholds(), LedgerConfig(),
                          with_models=False)
    assert "reviewer_precision" not in plain["a"]["by_detector"][ALL]
    left, _, _ = compare(_lines(events), Thresholds(), Thresholds(), LedgerConfig(),
                         with_models=False)
    legal_ids = [u.alert["alert_id"] for u in left.result.updates if u.alert["detector"] == "legal_event"]
    verdicts = {legal_ids[0]: "confirmed", legal_ids[1]: "false_positive"}
    _, _, judged = compare(_lines(events), Thresholds(), Thresholds(), LedgerConfig(),
                           feedback=verdicts, with_models=False)
    assert judged["a"]["by_detector"]["legal_event"]["reviewed"] == 2
    assert judged["a"]["by_detector"]["legal_event"]["reviewer_precision"] == 0.5


def test_cli_compare_writes_an_html_report_with_a_chart_and_prints_json(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(_lines(_history())) + b"\n")
    stricter = tmp_path / "b.toml"
    stricter.write_text("[legal_event]\nenabled = false\n")
    report = tmp_path / "whatif.html"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "backtest", str(history), "--compare", str(stricter),
                             "--report", str(report), "--json", "--no-models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["b"]["config"] == str(stricter)
    page = report.read_text()
    assert "<svg" in page and "<polyline" in page and "legal_event" in page


def test_report_without_compare_is_one_line_error(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(_lines(_history())) + b"\n")
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "backtest", str(history), "--report",
                             str(tmp_path / "x.html")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "creditwatch: error: --report needs --compare"
