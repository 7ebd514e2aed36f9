"""End to end on the embedded broker: events in, alerts stored, posted to Slack, published to Kafka.

One ``creditwatch worker`` subprocess (``tests.worker_harness``) with a SQLite
store, the Slack sink pointed at the local Web API stand-in
(``tests.slack_standin``) and the Kafka alert sink; the contract examples are
ingested with ``creditwatch ingest`` and the test watches the store, the
stand-in and ``{prefix}alerts``.

The helpers below judge "each alert once" for this module and for
``tests/test_delivery_faults.py``:

* :func:`wait_until_settled` -- every input event acknowledged (the group's
  committed offsets reached the end of the input topics, so every alert the
  events make is in the store) and every delivery of every stored alert
  ``delivered``;
* :func:`assert_posted_once` -- per stored alert exactly one parent message in
  the stand-in, and one thread reply per later Slack delivery (escalations
  and updates are replies, never new parents), nothing else posted;
* :func:`assert_published_once` -- ``{prefix}alerts`` holds exactly one record
  per Kafka delivery (alert_id, revision), keyed by customer_id, CONTRACT §3 JSON.

Which alerts to expect: the live worker uses the wall clock for "today" and
reads its three input topics in no fixed order; the backtest uses event time
and file order. So the expected alerts are the offline backtest's alerts of
the detectors whose *firing* (the alert id: customer, detector, triggering
event) depends on neither (:data:`CLOCK_FREE_DETECTORS`); their figures and
severity may still differ (a reversal's share of the exposure does depend on
the order), and other detectors may raise more alerts live. Every alert the
worker stored, expected or not, must be delivered exactly once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest

from pipeline.config import Settings
from sinks.store import AlertStore
from tests.slack_standin import STANDIN_TOKEN, SlackStandIn, slack_standin  # noqa: F401 - fixture
from tests.worker_harness import (
    WorkerProcess,
    cli_env,
    committed_offsets,
    end_offsets,
    read_topic,
    run_cli,
    settings_of,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = SHARED / "examples" / "events.jsonl"
CHANNEL = "#credit-alerts"

#: Detectors whose alerts fire on one event of the customers or payments topic,
#: whatever "today" is and whatever the order across topics: a legal event, an
#: ownership or bank-details change (the change event itself anchors the
#: episode), a first rating, a reversal of a payment (same topic and partition
#: as its payment, so always after it).
CLOCK_FREE_DETECTORS = frozenset({"legal_event", "ownership_change", "bank_details_change", "rating_downgrade",
                                  "payment_reversed"})

CONTRACT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "alert_id": str, "customer_id": str, "detector": str, "severity": str, "title": str, "reasons": list,
    "score": (float, int, type(None)), "raised_at": str, "event_ids": list, "status": str,
}
SEVERITIES = {"info", "warning", "critical"}
STATUSES = {"open", "acknowledged", "resolved", "false_positive"}


# --- shared with tests/test_delivery_faults.py ----------------------------------------


def worker_env(broker: Any, prefix: str, tmp_path: Path, slack: SlackStandIn, **extra: Any) -> dict[str, str]:
    """A worker environment with the Slack sink on ``slack`` and a one-second clock tick."""
    return cli_env(
        broker, prefix, f"{prefix}worker", tmp_path / "data",
        CREDITWATCH_TICK_INTERVAL_MS=1000,
        CREDITWATCH_SLACK_BOT_TOKEN=STANDIN_TOKEN,
        CREDITWATCH_SLACK_CHANNEL=CHANNEL,
        CREDITWATCH_SLACK_BASE_URL=slack.base_url,
        **extra,
    )  # fmt: skip


def offline_alerts(lines: Iterable[bytes], settings: Settings,
                   detectors: frozenset[str] = CLOCK_FREE_DETECTORS) -> dict[str, dict[str, Any]]:
    """The backtest's alerts (latest revision) of ``detectors``, by alert_id."""
    from detectors.config import load_thresholds
    from pipeline.backtest import build_engine, run_backtest

    result = run_backtest(list(lines), build_engine(load_thresholds(None), settings.ledger))
    assert not result.rejected, result.rejected
    return {aid: alert for aid, alert in result.alerts.items() if alert["detector"] in detectors}


def identity(alerts: Mapping[str, Mapping[str, Any]], ids: Iterable[str] | None = None) -> set[tuple[str, str, str]]:
    """(alert_id, customer_id, detector) of the alerts (those in ``ids`` only, if given)."""
    chosen = alerts if ids is None else {aid: alerts[aid] for aid in ids if aid in alerts}
    return {(aid, a["customer_id"], a["detector"]) for aid, a in chosen.items()}


def stored_alerts(store: AlertStore) -> dict[str, dict[str, Any]]:
    """Every stored alert with its history and deliveries (oldest first)."""
    found = {}
    for alert in store.list_alerts(limit=None):
        full = store.get_alert(alert["alert_id"])
        if full is not None:
            found[alert["alert_id"]] = full
    return found


def deliveries(alerts: Mapping[str, Mapping[str, Any]], sink: str | None = None) -> list[dict[str, Any]]:
    return [d for a in alerts.values() for d in a["deliveries"] if sink is None or d["sink"] == sink]


def describe_outbox(alerts: Mapping[str, Mapping[str, Any]]) -> str:
    counts = Counter((d["sink"], d["status"]) for d in deliveries(alerts))
    errors = sorted({d["last_error"] for d in deliveries(alerts) if d["last_error"]})[:3]
    return (f"{len(alerts)} alerts stored; deliveries {dict(sorted(counts.items()))}"
            + (f"; last errors {errors}" if errors else ""))


def inputs_acknowledged(settings: Settings) -> bool:
    """The worker's group committed every input event (so it processed and stored each one)."""
    ends = end_offsets(settings.bootstrap_servers, settings.input_topics)
    committed = committed_offsets(settings.bootstrap_servers, settings.consumer_group)
    return all(committed.get(tp, 0) >= end for tp, end in ends.items())


def wait_until_settled(
    store: AlertStore,
    settings: Settings,
    timeout: float,
    worker: WorkerProcess | None = None,
    expected: Iterable[str] = (),
) -> dict[str, dict[str, Any]]:
    """Poll until all input is acknowledged, ``expected`` alert ids are stored and every delivery is made.

    Returns the stored alerts (with deliveries). Fails at the deadline, at once
    if a delivery failed for good, and if the worker dies.
    """
    expected = set(expected)
    deadline = time.monotonic() + timeout
    while True:
        alerts = stored_alerts(store)
        failed = [d for d in deliveries(alerts) if d["status"] not in ("pending", "delivered")]
        assert not failed, f"deliveries gave up: {failed}"
        pending = [d for d in deliveries(alerts) if d["status"] == "pending"]
        if alerts and expected <= set(alerts) and not pending and inputs_acknowledged(settings):
            return alerts
        if worker is not None and not worker.alive():
            status = worker.process.returncode  # type: ignore[union-attr]
            raise AssertionError(f"{worker.name} died (status {status}); {describe_outbox(alerts)}; "
                                 f"stderr:\n{worker.stderr_tail()}")
        if time.monotonic() >= deadline:
            message = (f"not settled within {timeout:g}s: {describe_outbox(alerts)}; "
                       f"expected alerts missing: {sorted(expected - set(alerts))}")
            if worker is not None:
                message += f"; {worker.name} stderr:\n{worker.stderr_tail()}"
            raise AssertionError(message)
        time.sleep(0.2)


def assert_contract_alert(alert: Mapping[str, Any]) -> None:
    """An alert as CONTRACT §3 shapes it (extra fields allowed)."""
    for name, kind in CONTRACT_FIELDS.items():
        assert name in alert, f"{alert.get('alert_id')}: no {name!r}"
        assert isinstance(alert[name], kind), f"{alert.get('alert_id')}: {name}={alert[name]!r}"
    assert alert["severity"] in SEVERITIES, alert
    assert alert["status"] in STATUSES, alert
    assert datetime.fromisoformat(alert["raised_at"]).utcoffset() is not None, alert["raised_at"]
    assert alert["reasons"], alert
    for reason in alert["reasons"]:
        assert isinstance(reason.get("code"), str) and isinstance(reason.get("message"), str), reason
    assert all(isinstance(event_id, str) for event_id in alert["event_ids"]) and alert["event_ids"], alert


def assert_posted_once(alerts: Mapping[str, Mapping[str, Any]], slack: SlackStandIn) -> None:
    """Each stored alert is one parent message; each later Slack delivery of it one reply in its thread.

    The first Slack delivery of an alert posts the parent; every later one
    (escalation, update, status change) rewrites the parent and posts one
    reply. So the replies' revisions are exactly those of the later
    deliveries, once each, and nothing else is in the channel.
    """
    problems = []
    total = 0
    for aid, alert in alerts.items():
        rows = [d for d in alert["deliveries"] if d["sink"] == "slack"]
        total += len(rows)
        parents = slack.parents(aid)
        if len(parents) != 1:
            problems.append(f"{aid}: {len(parents)} parent messages for {len(rows)} deliveries")
            continue
        parent = parents[0]
        replies = slack.replies(aid)
        got = Counter(int((m.metadata or {}).get("event_payload", {}).get("revision", -1)) for m in replies)
        want = Counter(int(d["revision"]) for d in rows[1:])
        if got != want:
            problems.append(f"{aid}: replies for revisions {dict(got)}, deliveries after the first {dict(want)}")
        if any(m.thread_ts != parent.ts or m.orphan for m in replies):
            problems.append(f"{aid}: a reply outside the parent's thread")
        shown = (parent.metadata or {}).get("event_payload", {}).get("revision")
        if rows and shown != rows[-1]["revision"]:
            problems.append(f"{aid}: the parent shows revision {shown}, the last delivery was {rows[-1]['revision']}")
    stray = [m for m in slack.posted() if m.alert_id not in alerts]
    if stray:
        problems.append(f"{len(stray)} messages about no stored alert: {[m.alert_id for m in stray][:5]}")
    if len(slack.posted()) != total:
        problems.append(f"{len(slack.posted())} messages in the stand-in for {total} Slack deliveries")
    unauthorized = [r for r in slack.calls() if not r.authorized]
    if unauthorized:
        problems.append(f"{len(unauthorized)} requests without the bot token")
    assert not problems, "Slack did not get each alert exactly once:\n" + "\n".join(problems)


def assert_published_once(alerts: Mapping[str, Mapping[str, Any]], settings: Settings) -> list[Any]:
    """``{prefix}alerts`` holds one record per Kafka delivery, keyed by customer_id, in CONTRACT §3 form."""
    rows = Counter((aid, int(d["revision"])) for aid, a in alerts.items() for d in a["deliveries"]
                   if d["sink"] == "kafka")
    topic = settings.topic("alerts")
    in_topic = sum(end_offsets(settings.bootstrap_servers, [topic]).values())
    assert in_topic == sum(rows.values()), f"{topic} holds {in_topic} records for {sum(rows.values())} deliveries"
    records = read_topic(settings.bootstrap_servers, topic, count=in_topic, timeout=30) if in_topic else []
    published: Counter[tuple[str, int]] = Counter()
    for record in records:
        alert = json.loads(record.value)
        assert_contract_alert(alert)
        assert record.key == alert["customer_id"].encode(), (record.key, alert["customer_id"])
        assert alerts[alert["alert_id"]]["customer_id"] == alert["customer_id"]
        published[(alert["alert_id"], int(alert["revision"]))] += 1
    assert published == rows, f"published {dict(published)} != deliveries {dict(rows)}"
    return records


# --- item 7 -------------------------------------------------------------------------------


def test_contract_examples_end_to_end_alerts_stored_posted_to_slack_and_published_once_within_30_seconds(
    broker, unique_prefix, tmp_path, workers, slack_standin
):
    slack = slack_standin
    env = worker_env(broker, unique_prefix, tmp_path, slack)
    settings = settings_of(env)
    expected = offline_alerts(EXAMPLES.read_bytes().splitlines(), settings)
    assert {a["detector"] for a in expected.values()} == CLOCK_FREE_DETECTORS, expected

    worker = workers(env)
    ready = worker.wait_ready()
    ingested = run_cli(["ingest", str(EXAMPLES)], env)
    assert ingested.returncode == 0, ingested.stderr
    assert ingested.stdout.startswith("published 22 events"), ingested.stdout
    started = time.monotonic()

    # Within 30 s of the ingest: the expected alerts are in the store and were posted to Slack.
    store = AlertStore(settings.resolved_database_url)
    try:
        deadline = started + 30
        while True:
            stored = {a["alert_id"]: a for a in store.list_alerts(limit=None)}
            posted = slack.alert_ids()
            if set(expected) <= set(stored) and set(expected) <= posted:
                break
            assert worker.alive(), worker.stderr_tail()
            assert time.monotonic() < deadline, (
                f"within 30 s: stored {len(set(expected) & set(stored))} and posted "
                f"{len(set(expected) & posted)} of {len(expected)} expected alerts; stderr:\n{worker.stderr_tail()}"
            )
            time.sleep(0.1)
        within = time.monotonic() - started
        alerts = wait_until_settled(store, settings, timeout=30, worker=worker, expected=expected)
    finally:
        store.close()
    print(f"\nworker ready after {ready:.1f}s; {len(expected)} expected alerts stored and posted {within:.1f}s "
          f"after the ingest, all settled after {time.monotonic() - started:.1f}s; {len(alerts)} alerts in all, "
          f"{len(slack.posted())} Slack messages")

    assert identity(alerts, expected) == identity(expected)
    for alert in alerts.values():
        assert_contract_alert(alert)
        assert alert["slack_channel"] and alert["slack_ts"], f"{alert['alert_id']}: no Slack thread stored"
    assert_posted_once(alerts, slack)
    records = assert_published_once(alerts, settings)
    assert {json.loads(r.value)["alert_id"] for r in records} == set(alerts)

    # The command users run shows the same alerts, in contract form.
    listed = run_cli(["alerts", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert isinstance(shown, list)
    assert {a["alert_id"] for a in shown} == set(alerts)
    for alert in shown:
        assert_contract_alert(alert)
        assert alert["revision"] == alerts[alert["alert_id"]]["revision"]
    assert worker.alive()
