"""`creditwatch db upgrade` and `creditwatch alerts …` against a real store (SQLite and PostgreSQL).

The contract-facing behaviour runs the installed command line in a subprocess;
the longer workflows call ``pipeline.cli.main`` in-process (same code, no
interpreter start per step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.alerts import AlertUpdate
from pipeline.cli import main
from sinks.store import AlertStore

T0 = datetime(2026, 3, 4, 9, 12, tzinfo=timezone.utc)
CONTRACT_FIELDS = {"alert_id": str, "customer_id": str, "detector": str, "severity": str, "title": str,
                   "reasons": list, "raised_at": str, "event_ids": list, "status": str}


def run_cli(url: str, *args: str, tmp_path=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CREDITWATCH_DATABASE_URL": url, "USER": "cli-user"}
    env.pop("CREDITWATCH_DEBUG", None)
    if tmp_path is not None:
        env["CREDITWATCH_DATA_DIR"] = str(tmp_path)
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def seed(url: str) -> None:
    def update(alert_id, severity, customer, detector, hours):
        return AlertUpdate("raised", {
            "alert_id": alert_id, "customer_id": customer, "customer_name": f"{customer} Ltd", "detector": detector,
            "severity": severity, "title": f"{detector} on {customer}",
            "reasons": [{"code": "x", "message": "why", "value": 1.0, "threshold": 0.9}],
            "score": 0.8 if detector == "risk_score" else None, "raised_at": (T0 + timedelta(hours=hours)).isoformat(),
            "event_ids": ["e1"], "status": "open", "revision": 1, "threshold_version": 1,
        })

    store = AlertStore(url)
    try:
        store.record([update("al_a", "warning", "C1", "credit_limit", 0), update("al_b", "critical", "C2", "risk_score", 1),
                      update("al_c", "info", "C1", "overdue", 2)], ["memory"])
        store.change_status("al_c", "resolved", "anna", "paid")
    finally:
        store.close()


@pytest.fixture
def seeded_url(migrated_database_url):
    seed(migrated_database_url)
    return migrated_database_url


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- subprocess ---------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_then_reports_it_current(database_url, tmp_path):
    first = run_cli(database_url, "db", "upgrade", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "upgraded from empty to revision" in first.stdout
    assert "schema is current" in run_cli(database_url, "db", "upgrade", tmp_path=tmp_path).stdout


def test_alerts_list_json_is_an_array_of_contract_shaped_alerts(seeded_url):
    result = run_cli(seeded_url, "alerts", "list", "--json")
    assert result.returncode == 0, result.stderr
    alerts = json.loads(result.stdout)
    assert isinstance(alerts, list) and [a["alert_id"] for a in alerts] == ["al_c", "al_b", "al_a"]  # all, newest first
    for alert in alerts:
        for key, kind in CONTRACT_FIELDS.items():
            assert isinstance(alert[key], kind), key
        assert alert["severity"] in {"info", "warning", "critical"}
        assert alert["status"] in {"open", "acknowledged", "resolved", "false_positive"}
        assert alert["score"] is None or isinstance(alert["score"], float)
        assert datetime.fromisoformat(alert["raised_at"]).tzinfo is not None
    assert {a["alert_id"]: a["status"] for a in alerts}["al_c"] == "resolved"


def test_ack_on_a_resolved_alert_exits_2_with_one_clear_line(seeded_url):
    result = run_cli(seeded_url, "alerts", "ack", "al_c")
    assert result.returncode == 2
    assert one_error_line(result) == (
        "creditwatch: error: alert al_c is resolved; a resolved alert cannot be acknowledged (reopen it first)")
    assert result.stdout == ""


def test_alerts_on_an_unreachable_database_fail_in_one_line_without_hanging(tmp_path):
    result = run_cli("postgresql://postgres:pw-not-shown@127.0.0.1:1/x", "alerts", "list", tmp_path=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "database unavailable" in line and "pw-not-shown" not in line


# --- in-process (same handlers) ---------------------------------------------------------


@pytest.fixture
def cli(seeded_url, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CREDITWATCH_DATABASE_URL", seeded_url)
    monkeypatch.setenv("CREDITWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("USER", "cli-user")

    def call(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exited:  # argparse refusing the arguments
            code = exited.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def test_ack_assign_and_resolve_land_in_the_history_with_who_and_note(cli):
    assert cli("alerts", "ack", "al_a")[0] == 0  # --by defaults to $USER
    assert cli("alerts", "assign", "al_a", "bob", "--by", "anna")[0] == 0
    code, out, _ = cli("alerts", "resolve", "al_a", "--note", "paid in full", "--by", "bob")
    assert code == 0 and "resolved" in out
    code, out, _ = cli("alerts", "show", "al_a", "--json")
    history = json.loads(out)["history"]
    assert [(h["by"], h["change"], h["from_status"], h["to_status"], h["to_assignee"], h["note"]) for h in history] == [
        ("engine", "raised", None, "open", None, None),
        ("cli-user", "status", "open", "acknowledged", None, None),
        ("anna", "assigned", "acknowledged", "acknowledged", "bob", None),
        ("bob", "status", "acknowledged", "resolved", "bob", "paid in full"),
    ]
    code, out, _ = cli("alerts", "show", "al_a")
    assert code == 0 and "paid in full" in out and "history:" in out


def test_false_positive_and_resolve_need_a_note(cli):
    code, _, err = cli("alerts", "false-positive", "al_a")
    assert code == 2 and "--note" in err
    code, _, err = cli("alerts", "resolve", "al_a", "--note", "  ")
    assert code == 2 and "note" in err and len(err.strip().splitlines()) == 1
    code, _, _ = cli("alerts", "false-positive", "al_a", "--note", "known seasonal pattern")
    assert code == 0


def test_reopen_and_unassign(cli):
    assert cli("alerts", "reopen", "al_c", "--note", "cheque bounced")[0] == 0
    assert cli("alerts", "assign", "al_c", "bob")[0] == 0
    assert cli("alerts", "assign", "al_c", "--unassign")[0] == 0
    code, _, err = cli("alerts", "assign", "al_c")
    assert code == 2 and "--unassign" in err
    alert = json.loads(cli("alerts", "show", "al_c", "--json")[1])
    assert alert["status"] == "open" and alert["assignee"] is None


def test_list_filters_and_table(cli):
    assert [a["alert_id"] for a in json.loads(cli("alerts", "list", "--json", "--customer", "C1")[1])] == ["al_c", "al_a"]
    assert [a["alert_id"] for a in json.loads(cli("alerts", "list", "--json", "--detector", "risk_score")[1])] == ["al_b"]
    assert [a["alert_id"] for a in json.loads(cli("alerts", "list", "--json", "--status", "open",
                                                  "--status", "resolved", "--limit", "2")[1])] == ["al_c", "al_b"]
    code, out, _ = cli("alerts", "list", "--sort", "severity")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("ALERT") and lines[1].startswith("al_b")
    assert cli("alerts", "list", "--customer", "C404")[1].strip() == "no alerts"


def test_alerts_on_a_database_without_schema_say_run_db_upgrade(database_url, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CREDITWATCH_DATABASE_URL", database_url)
    monkeypatch.setenv("CREDITWATCH_DATA_DIR", str(tmp_path))
    assert main(["alerts", "list", "--json"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "run `creditwatch db upgrade`" in err


def test_list_filters_combine(cli):
    alerts = json.loads(cli("alerts", "list", "--json", "--status", "open", "--severity", "critical")[1])
    assert [a["alert_id"] for a in alerts] == ["al_b"]


def test_unknown_alert_is_one_line_exit_2(cli):
    for args in (("alerts", "show", "al_404"), ("alerts", "ack", "al_404")):
        code, _, err = cli(*args)
        assert code == 2 and err.strip() == "creditwatch: error: no alert 'al_404'"
