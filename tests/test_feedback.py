"""Reviewer feedback: verdicts are labels, a model learns P(confirmed) from them, each verdict once."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timezone

import pytest

from detectors.config import Thresholds
from pipeline.builders import invoice, make, register
from pipeline.config import LedgerConfig, Settings
from pipeline.feedback import REASON_CODE, FeedbackModel, FeedbackReplay, Verdict, load_verdicts
from pipeline.whatif import ALL, compare, feedback_from_store, format_text

NOW = datetime(2026, 2, 10, 12, tzinfo=timezone.utc)


def _alert(detector: str, severity: str = "warning", score: float | None = None) -> dict:
    return {"alert_id": f"al_{random.random()}", "customer_id": "C", "detector": detector, "severity": severity,
            "title": "t", "reasons": [{"code": "x", "message": "m", "value": 1.0, "threshold": 1.0}], "score": score}


def _position(utilisation: float, overdue_share: float = 0.2) -> dict:
    exposure = 10_000 * utilisation
    return {"utilisation": str(utilisation), "exposure": str(exposure), "overdue": str(exposure * overdue_share),
            "dso_days": "45", "open_disputes": [], "promises_broken": []}


# --- the model ------------------------------------------------------------------------


def test_detector_on_low_utilisation_customers_always_false_positive_drops_below_confirmed_ones():
    rng = random.Random(7)
    model = FeedbackModel(min_verdicts=20)
    low = model.features(_alert("dso_rising"), _position(0.15))
    high = model.features(_alert("dso_rising"), _position(0.95))
    assert model.predict(low) == pytest.approx(model.predict(high)) == pytest.approx(0.5, abs=0.01)  # the prior
    for _ in range(300):
        detector = rng.choice(["dso_rising", "credit_limit"])
        utilisation = rng.uniform(0.05, 1.2)
        x = model.features(_alert(detector, rng.choice(["warning", "critical"])), _position(utilisation))
        # dso_rising on customers using little of their limit: always noise; everything else mostly real.
        confirmed = not (detector == "dso_rising" and utilisation < 0.4) and rng.random() < 0.85
        model.learn(x, confirmed)
    p_low, p_high = model.estimate(low), model.estimate(high)
    other_low = model.estimate(model.features(_alert("credit_limit"), _position(0.15)))
    assert p_low < 0.35, p_low
    assert p_high > 0.65, p_high
    assert other_low > p_low + 0.2  # the pattern belongs to dso_rising, not to every detector
    metrics = model.metrics()
    assert metrics["verdicts_learned"] == 300 and metrics["roc_auc"] > 0.65  # progressive: scored before learning


def test_no_estimate_and_no_reason_until_enough_verdicts_then_a_reason_last():
    model = FeedbackModel(min_verdicts=3)
    alert = model.annotate(_alert("overdue"), _position(0.5))
    assert alert["feedback"]["confirm_probability"] is None and alert["feedback"]["features"]
    assert [r["code"] for r in alert["reasons"]] == ["x"]
    for _ in range(3):
        model.learn(alert["feedback"]["features"], confirmed=True)
    again = model.annotate(alert, _position(0.5))
    assert [r["code"] for r in again["reasons"]] == ["x", REASON_CODE]  # once, after the detector's own
    assert again["reasons"][-1]["value"] == again["feedback"]["confirm_probability"] > 0.5
    assert "learned from 3 verdicts" in again["reasons"][-1]["message"]


def test_snapshot_and_restore_keep_weights_counters_and_watermark():
    model = FeedbackModel(min_verdicts=1)
    x = model.features(_alert("overdue"), _position(0.3))
    for confirmed in (True, False, False, False):
        model.learn(x, confirmed)
    model.watermark, model.seen = 41, {43}
    twin = FeedbackModel()
    twin.restore(model.snapshot())
    assert twin.estimate(x) == model.estimate(x) < 0.5
    assert (twin.learned, twin.watermark, twin.seen) == (4, 41, {43})
    with pytest.raises(ValueError, match="unknown feedback model snapshot version"):
        twin.restore(__import__("pickle").dumps({"version": 99}))


def _verdict(history_id: int, confirmed: bool = True) -> Verdict:
    alert = {"detector": "overdue", "feedback": {"features": {"detector=overdue": 1.0}}}
    return Verdict(history_id, f"al_{history_id}", confirmed, None, "anna", alert)


def test_a_gap_in_history_ids_holds_the_watermark_until_it_fills_or_settles():
    model = FeedbackModel(settle_s=30)
    # id 3 is missing: maybe a transaction still in flight. 4 is learned now, but the watermark stays at 2.
    assert model.take([1, 2, 4], [_verdict(2), _verdict(4)], now=100.0) == 2
    assert model.watermark == 2 and model.seen == {4}
    assert model.take([4], [_verdict(4)], now=110.0) == 0  # read again: not learned twice
    # The in-flight transaction commits: 3 is learned, the watermark passes 4.
    assert model.take([3, 4], [_verdict(3, False), _verdict(4)], now=120.0) == 1
    assert model.watermark == 4 and model.seen == set() and model.learned == 3
    # A gap that stays (a rolled-back transaction) is passed once it is older than settle_s.
    model.take([7], [_verdict(7)], now=200.0)
    assert model.watermark == 4
    model.take([7], [_verdict(7)], now=231.0)
    assert model.watermark == 7 and model.learned == 4


def test_a_verdict_on_an_alert_stored_without_features_is_counted_not_learned():
    model = FeedbackModel()
    old = Verdict(1, "al_old", True, None, "anna", {"detector": "overdue", "feedback": None})
    assert model.take([1], [old]) == 0
    assert model.metrics()["skipped_without_features"] == 1 and model.watermark == 1


# --- the worker runtime on the real store (SQLite and PostgreSQL) ----------------------------


def _raise_legal_alert(runtime, customer: str, high_utilisation: bool) -> dict:
    """A court judgment on a customer using 95 % or 10 % of a 10,000 limit, through engine and store."""
    record, updates = None, []
    for event in (register(customer=customer, limit=10_000),
                  invoice(f"{customer}-1", 9500 if high_utilisation else 1000, customer=customer),
                  make("customer.legal_event", "2026-02-10", customer=customer, kind="court_judgment")):
        record, new = runtime.engine.on_event(record, event, NOW)
        updates += new
    asyncio.run(runtime.persist(updates, {customer: record}, NOW))
    (legal,) = [u.alert for u in updates if u.alert["detector"] == "legal_event"]
    return legal


def _runtime(store, feedback=None):
    from streams.runtime import WorkerRuntime

    return WorkerRuntime(Settings(), Thresholds(), store, {}, feedback=feedback or FeedbackModel(min_verdicts=10,
                                                                                                 settle_s=0))


def test_worker_learns_each_verdict_once_and_new_alerts_carry_the_estimate(alert_store):
    runtime = _runtime(alert_store)
    for i in range(12):
        low = _raise_legal_alert(runtime, f"L{i}", high_utilisation=False)
        alert_store.change_status(low["alert_id"], "false_positive", "anna", note="judgment is paid, no risk")
        high = _raise_legal_alert(runtime, f"H{i}", high_utilisation=True)
        alert_store.change_status(high["alert_id"], "resolved", "anna", note="credit hold agreed")
    stored = alert_store.get_alert(low["alert_id"])
    assert stored["confirm_probability"] is None  # raised before any verdict was learned

    assert asyncio.run(runtime.follow_verdicts()) == 24
    assert asyncio.run(runtime.follow_verdicts()) == 0  # a second poll learns nothing
    assert runtime.feedback.metrics()["by_detector"]["legal_event"] == {"verdicts": 24, "confirmed": 12}

    new_low = _raise_legal_alert(runtime, "L-new", high_utilisation=False)
    new_high = _raise_legal_alert(runtime, "H-new", high_utilisation=True)
    p_low = alert_store.get_alert(new_low["alert_id"])["confirm_probability"]
    p_high = alert_store.get_alert(new_high["alert_id"])["confirm_probability"]
    assert p_low < 0.4 < 0.6 < p_high, (p_low, p_high)
    assert alert_store.get_alert(new_high["alert_id"])["reasons"][-1]["code"] == REASON_CODE
    ranked = alert_store.list_alerts(status="open", detector="legal_event", order="-confirm_probability")
    assert [a["alert_id"] for a in ranked] == [new_high["alert_id"], new_low["alert_id"]]

    # A restarted worker (model restored from its checkpoint) learns only what came after it.
    restarted = _runtime(alert_store, FeedbackModel())
    restarted.feedback.restore(runtime.feedback.snapshot())
    assert asyncio.run(restarted.follow_verdicts()) == 0
    alert_store.change_status(new_low["alert_id"], "false_positive", "ben", note="paid meanwhile")
    alert_store.change_status(new_high["alert_id"], "acknowledged", "ben")  # no verdict
    assert asyncio.run(restarted.follow_verdicts()) == 1
    assert restarted.feedback.learned == 25


def test_verdicts_are_person_resolutions_and_false_positives_and_a_reopen_withdraws_the_label(alert_store):
    runtime = _runtime(alert_store)
    a = _raise_legal_alert(runtime, "A", high_utilisation=True)
    b = _raise_legal_alert(runtime, "B", high_utilisation=False)
    alert_store.change_status(a["alert_id"], "resolved", "anna", note="real")
    alert_store.change_status(b["alert_id"], "false_positive", "anna", note="noise")
    alert_store.change_status(b["alert_id"], "open", "ben", note="second look")
    ids, verdicts = alert_store.verdicts_after(0)
    assert [(v["alert_id"], v["confirmed"], v["by"]) for v in verdicts] == [
        (a["alert_id"], True, "anna"), (b["alert_id"], False, "anna")]
    assert verdicts[0]["alert"]["feedback"]["features"]["detector=legal_event"] == 1.0
    assert ids == sorted(ids) and len(ids) > len(verdicts)  # raised/reopened rows are ids but no verdicts
    assert alert_store.verdicts_after(ids[-1]) == ([], [])
    assert alert_store.feedback_labels() == {a["alert_id"]: "confirmed"}  # b's verdict was withdrawn
    assert feedback_from_store(alert_store) == {a["alert_id"]: "confirmed"}


# --- offline: the same learning in a backtest and the what-if report --------------------------


def _history_lines(customers: int = 40) -> list[bytes]:
    events = []
    for i in range(customers):
        cid = f"C{i:02d}"
        high = i % 2 == 0
        events += [register(customer=cid, limit=10_000),
                   invoice(f"{cid}-1", 9500 if high else 1000, customer=cid),
                   make("customer.legal_event", f"2026-{2 + i // 10:02d}-{1 + i % 10 * 2:02d}", customer=cid,
                        kind="court_judgment")]
    return [event.model_dump_json().encode() for event in events]


def test_backtest_replays_verdicts_review_days_after_raising_and_reports_the_model(tmp_path):
    from pipeline.backtest import build_engine, run_backtest

    lines = _history_lines()
    plain = run_backtest(lines, build_engine(Thresholds(), LedgerConfig(), with_models=False))
    legal = {a["alert_id"]: a for a in plain.alerts.values() if a["detector"] == "legal_event"}
    verdicts = {alert_id: "confirmed" if int(a["customer_id"][1:]) % 2 == 0 else "false_positive"
                for alert_id, a in legal.items()}
    path = tmp_path / "verdicts.json"
    path.write_text(__import__("json").dumps([{"alert_id": k, "status": "resolved" if v == "confirmed" else v}
                                              for k, v in verdicts.items()]))
    assert load_verdicts(path) == verdicts
    replay = FeedbackReplay(load_verdicts(path), FeedbackModel(min_verdicts=10), review_days=7)
    result = run_backtest(lines, build_engine(Thresholds(), LedgerConfig(), with_models=False), feedback=replay)
    assert result.feedback["verdicts_learned"] < len(verdicts)  # the last week's verdicts were not known yet
    assert result.feedback["verdicts_learned"] >= 30
    late = sorted((a for a in result.alerts.values() if a["detector"] == "legal_event"), key=lambda a: a["raised_at"])
    last_low = next(a for a in reversed(late) if int(a["customer_id"][1:]) % 2)
    last_high = next(a for a in reversed(late) if int(a["customer_id"][1:]) % 2 == 0)
    assert last_low["confirm_probability"] < last_high["confirm_probability"]
    assert result.to_json()["feedback_model"]["roc_auc"] > 0.7


def test_what_if_report_shows_reviewer_precision_next_to_write_off_precision_and_the_feedback_model():
    lines = _history_lines(20)
    left, _, _ = compare(lines, Thresholds(), Thresholds(), LedgerConfig(), with_models=False)
    ids = sorted({u.alert_id for u in left.result.updates if u.alert["detector"] == "legal_event"})
    verdicts = {alert_id: ("confirmed" if i % 4 == 0 else "false_positive") for i, alert_id in enumerate(ids)}
    _, _, report = compare(lines, Thresholds(), Thresholds(), LedgerConfig(), feedback=verdicts, with_models=False)
    row = report["a"]["by_detector"]["legal_event"]
    assert row["reviewed"] == len(ids) and row["reviewer_precision"] == round(
        sum(v == "confirmed" for v in verdicts.values()) / len(ids), 4)
    assert "precision" in row and ALL in report["a"]["by_detector"]
    assert report["a"]["feedback_model"]["verdicts_learned"] > 0
    text = format_text(report)
    assert "reviewer precision" in text and "precision" in text and "reviewer-feedback model (A)" in text


# --- the checkpoint on the embedded broker ---------------------------------------------------


@pytest.mark.broker
def test_checkpoints_are_found_by_key_models_and_feedback(broker, unique_prefix):
    from streams.admin import ensure_topics
    from streams.app import checkpoint_topic_name
    from streams.worker import load_model_checkpoint
    from tests.worker_harness import publish

    settings = Settings(broker_url=broker.url, consumer_group=f"{unique_prefix}group")
    topic = checkpoint_topic_name(settings)
    ensure_topics(settings.bootstrap_servers, {topic: 1})
    assert load_model_checkpoint(settings, b"feedback") is None
    publish(settings.bootstrap_servers, [(topic, b"models", b"m1"), (topic, b"feedback", b"f1"),
                                         (topic, b"models", b"m2"), (topic, b"feedback", b"f2")])
    assert load_model_checkpoint(settings) == b"m2"
    assert load_model_checkpoint(settings, b"feedback") == b"f2"


# --- the command line ----------------------------------------------------------------------


def test_cli_backtest_replays_a_verdicts_file_and_alerts_sort_by_confirm_probability(tmp_path, alert_store):
    import json
    import subprocess
    import sys

    lines = _history_lines()
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(lines) + b"\n")
    from pipeline.backtest import build_engine, run_backtest

    plain = run_backtest(lines, build_engine(Thresholds(), LedgerConfig(), with_models=False))
    verdicts = {a["alert_id"]: "confirmed" if int(a["customer_id"][1:]) % 2 == 0 else "false_positive"
                for a in plain.alerts.values() if a["detector"] == "legal_event"}
    path = tmp_path / "verdicts.json"
    path.write_text(json.dumps(verdicts))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "backtest", str(history), "--verdicts", str(path),
                           "--review-days", "3", "--json", "--no-models"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)["feedback_model"]
    assert model["verdicts_learned"] > 30 and model["by_detector"]["legal_event"]["verdicts"] == model["verdicts_learned"]
    path.write_text('{"al_x": "maybe"}')
    refused = subprocess.run([sys.executable, "-m", "pipeline.cli", "backtest", str(history), "--verdicts", str(path)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "neither confirmed nor false_positive" in refused.stderr

    runtime = _runtime(alert_store, FeedbackModel(min_verdicts=2, settle_s=0))
    for i in range(3):
        alert_store.change_status(_raise_legal_alert(runtime, f"L{i}", False)["alert_id"], "false_positive", "a", note="n")
        alert_store.change_status(_raise_legal_alert(runtime, f"H{i}", True)["alert_id"], "resolved", "a", note="y")
    asyncio.run(runtime.follow_verdicts())
    low = _raise_legal_alert(runtime, "L-new", False)["alert_id"]
    high = _raise_legal_alert(runtime, "H-new", True)["alert_id"]
    env = {**__import__("os").environ, "CREDITWATCH_DATABASE_URL": alert_store.url.render_as_string(hide_password=False)}
    listed = subprocess.run([sys.executable, "-m", "pipeline.cli", "alerts", "list", "--status", "open", "--sort",
                             "confirm", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0, listed.stderr
    assert [a["alert_id"] for a in json.loads(listed.stdout)] == [high, low]


# --- end to end: a worker on the embedded broker --------------------------------------------


def _wait(check, what: str, worker, timeout: float = 60):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert worker.alive(), f"worker died while waiting for {what}:\n{worker.stderr_tail()}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:g} s:\n{worker.stderr_tail()}")


@pytest.mark.broker
@pytest.mark.slow
def test_worker_learns_verdicts_from_the_store_once_across_a_restart(broker, unique_prefix, tmp_path, workers):
    import json
    from datetime import date, timedelta

    from sinks.store import AlertStore
    from tests.worker_harness import cli_env, publish, settings_of

    env = cli_env(broker, unique_prefix, f"g-{unique_prefix}", tmp_path / "data", CREDITWATCH_THRESHOLD_POLL_MS=300)
    settings = settings_of(env)
    worker = workers(env, "first")
    worker.wait_ready(60)
    store = AlertStore(settings.resolved_database_url)
    today = date.today()

    def raise_judgment(customer: str, high: bool) -> None:
        now = datetime.now(timezone.utc).isoformat()
        events = [
            ("customers", {"type": "customer.registered", "name": customer, "country": "DE", "credit_limit": "10000",
                           "currency": "EUR", "payment_terms_days": 30}),
            ("invoices", {"type": "invoice.issued", "invoice_id": f"{customer}-1", "amount": "9500.00" if high else
                          "1000.00", "currency": "EUR", "issued_on": today.isoformat(),
                          "due_on": (today + timedelta(days=30)).isoformat()}),
            ("customers", {"type": "customer.legal_event", "kind": "court_judgment"}),
        ]
        publish(settings.bootstrap_servers, [
            (settings.topic(topic), customer.encode(), json.dumps(
                {"event_id": f"{customer}-{i}", "customer_id": customer, "occurred_at": now, **body}).encode())
            for i, (topic, body) in enumerate(events)])

    def judgment_of(customer: str) -> dict | None:
        found = store.list_alerts(customer=customer, detector="legal_event")
        return found[0] if found else None

    for i in range(11):  # min_verdicts is 20: 22 verdicts make the model ready
        raise_judgment(f"L{i}", high=False)
        raise_judgment(f"H{i}", high=True)
    for i in range(11):
        low = _wait(lambda: judgment_of(f"L{i}"), f"alert of L{i}", worker)
        high = _wait(lambda: judgment_of(f"H{i}"), f"alert of H{i}", worker)
        assert low["confirm_probability"] is None
        store.change_status(low["alert_id"], "false_positive", "anna", note="judgment paid")
        store.change_status(high["alert_id"], "resolved", "anna", note="credit hold")

    def learned_alert(customer: str, high: bool) -> dict:
        raise_judgment(customer, high)
        return _wait(lambda: (a := judgment_of(customer)) and a, f"alert of {customer}", worker)

    # The worker learns the verdicts within a few polls; a new alert then carries the estimate. A poll may
    # fall between two of the verdicts above, so an early probe can say "learned from 20 (or 21)": probe
    # until all 22 are learned.
    probe = 0
    while True:
        alert = learned_alert(f"P{probe}", high=False)
        if (alert["confirm_probability"] is not None and "learned from 22 verdicts" in alert["reasons"][-1]["message"]
                or probe >= 40):
            break
        probe += 1
    assert alert["confirm_probability"] is not None, worker.stderr_tail()
    assert "learned from 22 verdicts" in alert["reasons"][-1]["message"]
    high_alert = learned_alert("P-high", high=True)
    assert alert["confirm_probability"] < high_alert["confirm_probability"]

    assert worker.terminate() == 0  # a clean stop checkpoints the models
    again = workers(env, "second")
    again.wait_ready(60)
    assert "restored the reviewer-feedback model (22 verdicts learned)" in again.stderr_text()
    worker = again
    store.change_status(high_alert["alert_id"], "resolved", "ben", note="hold agreed")
    last = None
    for n in range(40):
        last = learned_alert(f"Q{n}", high=True)
        if "learned from 23 verdicts" in last["reasons"][-1]["message"]:
            break
    # Only the one new verdict was learned after the restart, none of the 22 again.
    assert "learned from 23 verdicts" in last["reasons"][-1]["message"], last["reasons"][-1]
    store.close()
