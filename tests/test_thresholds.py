"""Threshold versions with an audit trail, and workers that follow them live."""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta, timezone

import pytest

from detectors.config import ThresholdError, load_thresholds
from pipeline.tuning import change, current, history, with_value
from tests.worker_harness import cli_env, publish, run_cli, settings_of


def test_a_change_is_a_new_version_with_who_why_and_old_to_new(alert_store):
    version, changes = change(alert_store, "credit_limit.warning_utilisation", "0.9", "ops-anna", "earlier heads-up")
    assert changes == [("credit_limit.warning_utilisation", 1.0, 0.9)]
    version2, _ = change(alert_store, "overdue.warning_days", "45", "ops-ben", "seasonal slack")
    assert version2 == version + 1
    entries = history(alert_store)
    assert [(e["version"], e["changed_by"], e["reason"]) for e in entries] == [
        (version2, "ops-ben", "seasonal slack"), (version, "ops-anna", "earlier heads-up")]
    assert entries[0]["changes"] == [{"key": "overdue.warning_days", "old": 60, "new": 45}]
    assert current(alert_store).thresholds.options_for("credit_limit").warning_utilisation == 0.9


def test_out_of_range_value_is_refused_naming_the_key_and_the_allowed_range(alert_store):
    with pytest.raises(ThresholdError) as refused:
        change(alert_store, "credit_limit.warning_utilisation", "9", "ops", "typo")
    assert str(refused.value) == (
        "thresholds: credit_limit.warning_utilisation: 9 is out of range (allowed: 0.1 to 5.0)")
    assert alert_store.threshold_changes() == []


def test_a_change_without_a_reason_is_refused(alert_store):
    with pytest.raises(ThresholdError, match="reason is required"):
        change(alert_store, "overdue.warning_days", "45", "ops", "  ")


def test_unknown_detector_or_option_is_refused_with_one_line():
    from detectors.config import Thresholds

    with pytest.raises(ThresholdError, match=r"\[nope\] is not a known detector"):
        with_value(Thresholds(), "nope.x", "1")
    with pytest.raises(ThresholdError, match="credit_limit.colour is not an option of"):
        with_value(Thresholds(), "credit_limit.colour", "1")


def test_exported_thresholds_are_a_config_file_that_loads_back_the_same(tmp_path, migrated_database_url):
    env = {"CREDITWATCH_DATABASE_URL": migrated_database_url}
    assert run_cli(["thresholds", "set", "disputes.warning_share", "0.3", "--reason", "fewer notes"], env).returncode == 0
    exported = run_cli(["thresholds", "export"], env)
    assert exported.returncode == 0
    path = tmp_path / "exported.toml"
    path.write_text(exported.stdout)
    loaded = load_thresholds(path)
    assert loaded.options_for("disputes").warning_share == 0.3
    shown = json.loads(run_cli(["thresholds", "show", "--json"], env).stdout)
    assert shown["thresholds"]["disputes"]["warning_share"] == 0.3


def test_cli_set_with_bad_value_prints_one_line_and_exits_2(migrated_database_url):
    result = run_cli(["thresholds", "set", "overdue.warning_days", "0", "--reason", "x"],
                     {"CREDITWATCH_DATABASE_URL": migrated_database_url})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "creditwatch: error: thresholds: overdue.warning_days: 0 is out of range (allowed: 1 to 365)"]


def _event(event_id, kind, customer, when, **fields):
    return {"event_id": event_id, "type": kind, "customer_id": customer, "occurred_at": when.isoformat(), **fields}


def test_running_worker_applies_a_threshold_change_within_5_seconds_and_alerts_carry_the_version(
        broker, unique_prefix, tmp_path, workers):
    env = cli_env(broker, unique_prefix, f"g-{unique_prefix}", tmp_path / "data",
                  CREDITWATCH_THRESHOLD_POLL_MS=500, CREDITWATCH_TICK_INTERVAL_MS=1000)
    settings = settings_of(env)
    worker = workers(env)
    worker.wait_ready()
    now = datetime.now(timezone.utc)
    today = date.today()
    first = [
        _event("t-reg", "customer.registered", "K1", now, name="Kestrel Ltd", country="GB", credit_limit="50000",
               currency="EUR", payment_terms_days=30),
        _event("t-inv1", "invoice.issued", "K1", now, invoice_id="K-1", amount="47000.00", currency="EUR",
               issued_on=today.isoformat(), due_on=(today + timedelta(days=30)).isoformat()),
    ]
    publish(settings.bootstrap_servers, [(settings.topic(e["type"].split(".")[0] + "s"), b"K1", json.dumps(e).encode())
                                         for e in first])
    from sinks.store import AlertStore

    store = AlertStore(settings.resolved_database_url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not store.get_position("K1"):
        time.sleep(0.2)
    assert store.get_position("K1"), "the worker did not process the first events"
    assert not store.list_alerts(detector="credit_limit"), "94% of the limit is below the default warning level"

    changed = run_cli(["thresholds", "set", "credit_limit.warning_utilisation", "0.9",
                       "--reason", "warn before the limit", "--by", "ops-test"], env)
    assert changed.returncode == 0, changed.stderr
    version = current(store).number
    set_at = time.monotonic()
    applied_after = None
    for n in range(20):  # one small invoice every 0.25 s, until one is judged by the new version
        invoice = _event(f"t-inv-small-{n}", "invoice.issued", "K1", datetime.now(timezone.utc),
                         invoice_id=f"K-S{n}", amount="10.00", currency="EUR", issued_on=today.isoformat(),
                         due_on=(today + timedelta(days=30)).isoformat())
        publish(settings.bootstrap_servers, [(settings.topic("invoices"), b"K1", json.dumps(invoice).encode())])
        time.sleep(0.25)
        raised = store.list_alerts(detector="credit_limit")
        if raised:
            applied_after = time.monotonic() - set_at
            break
    assert applied_after is not None and applied_after <= 5.0, f"not applied within 5 s ({applied_after})"
    alert = store.list_alerts(detector="credit_limit")[0]
    assert alert["threshold_version"] == version
    print(f"threshold change applied after {applied_after:.2f} s")
    store.close()
