"""What a running worker tells its operators (issue 7, item 3): /metrics, /healthz, /readyz and its log lines.

One ``creditwatch worker`` on the embedded broker, the Slack sink on the local
stand-in (whose first answer is a 500), the contract's example events plus one
malformed message. Every figure on /metrics is checked against what the test
sent or against the store, the record of truth — not merely for being there.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
import pytest

from pipeline.events import parse_event
from sinks.store import AlertStore
from streams.ingest import ingest_file
from tests.slack_standin import slack_standin  # noqa: F401 - fixture
from tests.test_end_to_end import EXAMPLES, deliveries, offline_alerts, wait_until_settled, worker_env
from streams.broker import free_port
from tests.worker_harness import metric_total as total, publish, scrape_metrics, settings_of

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read().decode()


def test_metrics_count_events_dead_letters_alerts_and_deliveries_as_the_store_and_the_input_say(
    broker, unique_prefix, tmp_path, workers, slack_standin
):
    slack = slack_standin
    # The sink makes 3 attempts per call: three 500s fail the first delivery, which the outbox retries.
    slack.plan(["500", "500", "500"])
    port = free_port()
    env = worker_env(broker, unique_prefix, tmp_path, slack, CREDITWATCH_HEALTH_PORT=port,
                     CREDITWATCH_LOG_LEVEL="INFO")
    settings = settings_of(env)
    lines = [line for line in EXAMPLES.read_bytes().splitlines() if line.strip()]
    expected = offline_alerts(lines, settings)
    sent = Counter((parse_event(line).topic_kind, parse_event(line).type) for line in lines)

    worker = workers(env)
    worker.wait_ready()
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    report = ingest_file(EXAMPLES, settings)
    assert report.published == len(lines)
    publish(settings.bootstrap_servers, [(settings.topic("invoices"), b"C-broken", b"{not json")])
    store = AlertStore(settings.resolved_database_url)
    try:
        alerts = wait_until_settled(store, settings, timeout=90, worker=worker, expected=expected)
    finally:
        store.close()
    made = deliveries(alerts)
    delivered = sum(1 for d in made if d["status"] == "delivered")
    failed_attempts = sum(d["attempts"] - 1 for d in made)
    assert failed_attempts >= 1, "the Slack 500 did not reach the outbox"

    # The counters follow the store within a few seconds (the gauges refresh every 5 s).
    deadline = time.monotonic() + 30
    while True:
        found = scrape_metrics(port)
        done = (total(found, "creditwatch_deliveries_delivered_total") == delivered
                and total(found, "creditwatch_deliveries", status="delivered") == delivered
                and found.get("creditwatch_consumer_lag"))
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    applied = {(labels["topic"], labels["type"]): int(value)
               for labels, value in found["creditwatch_events_processed_total"] if value}
    assert applied == dict(sent), f"events by topic and type: {applied} != what was sent {dict(sent)}"
    assert total(found, "creditwatch_events_dead_lettered_total", topic=settings.topic("invoices")) == 1
    assert total(found, "creditwatch_events_dead_lettered_total") == 1
    # One latency observation per message taken from the input, the malformed one included (and any copy read
    # again after a rebalance, which counts as a duplicate).
    taken = (total(found, "creditwatch_events_processed_total") + total(found, "creditwatch_events_duplicate_total")
             + total(found, "creditwatch_events_dead_lettered_total"))
    assert taken >= len(lines) + 1
    assert total(found, "creditwatch_event_to_stored_seconds_count") == taken
    # Every stored alert was raised once, by an event or by the clock; by detector as the store has them.
    raised = Counter()
    for labels, value in found["creditwatch_alerts_total"]:
        if labels["change"] == "raised":
            raised[labels["detector"]] += int(value)
    assert raised == Counter(a["detector"] for a in alerts.values())
    assert total(found, "creditwatch_deliveries_delivered_total") == delivered
    assert total(found, "creditwatch_deliveries_failed_total") == failed_attempts
    assert total(found, "creditwatch_deliveries", status="delivered") == delivered
    lag = {(labels["topic"], labels["partition"]): value for labels, value in found["creditwatch_consumer_lag"]}
    assert {topic for topic, _ in lag} == set(settings.input_topics)
    assert all(value == 0 for value in lag.values()), lag
    assert "creditwatch_model_roc_auc" in found
    # The event loop's lateness is sampled all along (a 50 ms timer: at least a few samples a second).
    assert total(found, "creditwatch_event_loop_lag_seconds_count") >= 10
    # Each batch's store transaction is timed: where the batches wait when the store is slow.
    assert total(found, "creditwatch_batch_store_seconds_count") == total(found, "creditwatch_batch_seconds_count") > 0
    assert total(found, "creditwatch_table_restores_total") >= 1  # one at start; a slow heartbeat may add a rebalance

    # Log lines carry the context fields as key=value.
    log = worker.stderr_text()
    some_alert = next(iter(alerts.values()))
    assert f"customer_id={some_alert['customer_id']}" in log and f"alert_id={some_alert['alert_id']}" in log
    assert any("event_id=" in line and "alert_id=" in line for line in log.splitlines())
    assert any("dead-lettered" in line and f"topic={settings.topic('invoices')}" in line for line in log.splitlines())


def test_a_bad_log_level_is_one_readable_line(tmp_path):
    from tests.worker_harness import run_cli

    result = run_cli(["worker"], env={"CREDITWATCH_LOG_LEVEL": "LOUD", "CREDITWATCH_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "creditwatch: error: CREDITWATCH_LOG_LEVEL='LOUD' is not one of DEBUG, INFO, WARNING, ERROR"], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("level", "clients"), [
    ("DEBUG", "INFO"),  # group joins, assignments and table recovery: why a worker reads nothing
    ("INFO", "WARNING"),
    ("WARNING", "WARNING"),
    ("ERROR", "ERROR"),
])
def test_the_kafka_clients_speak_at_info_only_when_the_worker_logs_at_debug(level, clients):
    import logging

    from streams.worker import LIBRARY_LOGGERS, quiet_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    try:
        quiet_logging(getattr(logging, level))
        assert logging.getLevelName(root.level) == level
        assert {name: logging.getLevelName(logging.getLogger(name).level) for name in LIBRARY_LOGGERS} == (
            dict.fromkeys(LIBRARY_LOGGERS, clients))
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, value in saved_levels.items():
            logging.getLogger(name).setLevel(value)
