"""The outbox's batch path: plain sinks' deliveries of a claimed batch are marked in one go, Slack one by one."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from pipeline.alerts import AlertUpdate
from pipeline.clock import ManualClock
from sinks.base import ConsoleSink, SinkError
from sinks.outbox import Backoff, Delivery, OutboxDeliverer
from sinks.store import AlertStore

T0 = datetime(2026, 3, 4, 9, 0, tzinfo=timezone.utc)


def update(alert_id: str, revision: int = 1, change: str = "raised", severity: str = "warning") -> AlertUpdate:
    return AlertUpdate(change, {
        "alert_id": alert_id, "customer_id": f"C-{alert_id}", "customer_name": "Acme", "detector": "credit_limit",
        "severity": severity, "title": f"{severity}: exposure over limit", "reasons": [], "score": None,
        "raised_at": T0.isoformat(), "updated_at": T0.isoformat(), "event_ids": ["e1"], "status": "open",
        "revision": revision, "threshold_version": None,
    })


def statuses(store: AlertStore, sink: str, alert_ids: list[str]) -> list[str]:
    out = []
    for alert_id in alert_ids:
        out += [d["status"] for d in store.get_alert(alert_id)["deliveries"] if d["sink"] == sink]
    return out


class WatchingSink:
    """A plain sink that notes, at each delivery, what the store says about the other alerts' deliveries."""

    name: ClassVar[str] = "console"

    def __init__(self, store: AlertStore, alert_ids: list[str], fail: set[str] = frozenset()):
        self.store, self.alert_ids, self.fail = store, alert_ids, fail
        self.seen: list[tuple[str, list[str]]] = []

    def deliver(self, update: AlertUpdate) -> None:
        self.seen.append((update.alert_id, statuses(self.store, self.name, self.alert_ids)))
        if update.alert_id in self.fail:
            raise SinkError("console closed")


class WatchingThreadSink:
    """A Slack-like rich sink (``send``) that notes the store's view of the other alerts at each send."""

    name: ClassVar[str] = "slack"

    def __init__(self, store: AlertStore, alert_ids: list[str]):
        self.store, self.alert_ids = store, alert_ids
        self.seen: list[tuple[str, list[str]]] = []

    def send(self, delivery: Delivery) -> dict[str, Any]:
        self.seen.append((delivery.alert["alert_id"], statuses(self.store, self.name, self.alert_ids)))
        return {"channel": "C0ALERTS", "ts": f"1700000000.{len(self.seen):06d}"}


def deliverer(store: AlertStore, sinks: dict[str, Any]) -> OutboxDeliverer:
    return OutboxDeliverer(store, sinks, clock=ManualClock(T0), backoff=Backoff(base=1, max_delay=300, jitter=0))


def test_mark_delivered_many_marks_pending_rows_once_and_leaves_others(alert_store):
    alert_store.record([update("al_a"), update("al_b"), update("al_c")], ["kafka"], now=T0)
    claimed = {d.alert["alert_id"]: d for d in alert_store.due_deliveries(T0)}
    alert_store.mark_failed(claimed["al_c"].delivery_id, "down", T0, permanent=True)

    ids = [claimed[a].delivery_id for a in ("al_a", "al_b", "al_c")]
    assert alert_store.mark_delivered_many(ids + [ids[0]], now=T0 + timedelta(seconds=1)) == 2
    assert alert_store.mark_delivered_many(ids) == 0  # already marked: nothing changes
    assert alert_store.mark_delivered_many([]) == 0

    rows = {a: alert_store.get_alert(a)["deliveries"][0] for a in ("al_a", "al_b", "al_c")}
    assert [rows[a]["status"] for a in ("al_a", "al_b", "al_c")] == ["delivered", "delivered", "failed"]
    assert rows["al_a"]["attempts"] == 1 and rows["al_a"]["delivered_at"] is not None
    assert alert_store.due_deliveries(T0 + timedelta(days=1)) == []
    assert alert_store.delivery_counts() == {"delivered": 2, "failed": 1}


def test_plain_sink_batch_is_marked_in_one_go_after_every_delivery_of_it(alert_store):
    ids = ["al_1", "al_2", "al_3"]
    alert_store.record([update(a) for a in ids], ["console"], now=T0)
    sink = WatchingSink(alert_store, ids)

    assert deliverer(alert_store, {"console": sink}).run_once() == 3

    # While the batch was being delivered nothing of it was marked; afterwards all of it is.
    assert [seen for _, seen in sink.seen] == [["pending"] * 3] * 3
    assert statuses(alert_store, "console", ids) == ["delivered"] * 3


def test_slack_like_sink_is_still_marked_one_delivery_at_a_time(alert_store):
    ids = ["al_1", "al_2", "al_3"]
    alert_store.record([update(a) for a in ids], ["slack"], now=T0)
    sink = WatchingThreadSink(alert_store, ids)

    assert deliverer(alert_store, {"slack": sink}).run_once() == 3

    # Each send sees the earlier sends of the same run already marked (with their references).
    assert [seen for _, seen in sink.seen] == [
        ["pending", "pending", "pending"], ["delivered", "pending", "pending"], ["delivered", "delivered", "pending"]]
    assert [alert_store.get_alert(a)["slack_ts"] for a in ids] == [f"1700000000.{n:06d}" for n in (1, 2, 3)]


def test_a_failure_inside_a_plain_batch_is_retried_alone(alert_store):
    ids = ["al_1", "al_2", "al_3"]
    alert_store.record([update(a) for a in ids], ["console"], now=T0)
    sink = WatchingSink(alert_store, ids, fail={"al_2"})
    outbox = deliverer(alert_store, {"console": sink})

    assert outbox.run_once() == 2
    assert (outbox.last.delivered, outbox.last.failed) == (2, 1)
    assert statuses(alert_store, "console", ids) == ["delivered", "pending", "delivered"]
    sink.fail = set()
    assert outbox.run_once(T0 + timedelta(seconds=2)) == 1
    assert [a for a, _ in sink.seen] == ["al_1", "al_2", "al_3", "al_2"]
    assert statuses(alert_store, "console", ids) == ["delivered"] * 3


def test_batch_keeps_per_alert_order_an_escalation_waits_for_its_raise(alert_store):
    alert_store.record([update("al_1"), update("al_2")], ["console"], now=T0)
    alert_store.record([update("al_1", revision=2, change="escalated", severity="critical")], ["console"], now=T0)
    sink = WatchingSink(alert_store, ["al_1", "al_2"])
    outbox = deliverer(alert_store, {"console": sink})

    assert outbox.run_once() == 2  # al_1's raise and al_2's raise; the escalation is not due yet
    assert outbox.run_once() == 1
    assert [a for a, _ in sink.seen] == ["al_1", "al_2", "al_1"]


def test_store_trouble_before_the_batch_mark_leaves_the_batch_to_be_delivered_again(migrated_database_url):
    """At least once: the batch's deliveries were made, the mark was not committed → all are made again."""

    class MarkFails(AlertStore):
        def mark_delivered_many(self, delivery_ids, now=None):
            raise RuntimeError("worker died before the commit")

    ids = ["al_1", "al_2"]
    broken = MarkFails(migrated_database_url)
    store = AlertStore(migrated_database_url)
    try:
        store.record([update(a) for a in ids], ["console"], now=T0)
        sink = WatchingSink(store, ids)
        try:
            deliverer(broken, {"console": sink}).run_once(T0)
        except RuntimeError:
            pass
        assert statuses(store, "console", ids) == ["pending"] * 2
        assert deliverer(store, {"console": sink}).run_once(T0 + timedelta(minutes=2)) == 2  # after the lease
        assert [a for a, _ in sink.seen] == ["al_1", "al_2", "al_1", "al_2"]
    finally:
        broken.close()
        store.close()


def test_kafka_sink_sends_a_batch_and_the_outbox_marks_it(alert_store, broker, unique_prefix):
    from kafka import KafkaConsumer

    from sinks.kafka import KafkaAlertSink

    topic = f"{unique_prefix}.alerts"
    ids = [f"al_{n}" for n in range(5)]
    alert_store.record([update(a) for a in ids], ["kafka", "console"], now=T0)
    kafka = KafkaAlertSink(broker.bootstrap, topic)
    try:
        import io

        outbox = deliverer(alert_store, {"kafka": kafka, "console": ConsoleSink(io.StringIO())})
        assert outbox.run_once() == 10
        assert statuses(alert_store, "kafka", ids) == ["delivered"] * 5
        consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                 consumer_timeout_ms=3000, group_id=None)
        try:
            got = [json.loads(m.value)["alert_id"] for m in consumer]
        finally:
            consumer.close()
        assert sorted(got) == ids
    finally:
        kafka.close()


def test_kafka_deliver_many_reports_an_unreachable_broker_for_each_update():
    from sinks.kafka import KafkaAlertSink

    sink = KafkaAlertSink("127.0.0.1:1", "nowhere.alerts", timeout_s=2)
    outcomes = sink.deliver_many([update("al_1"), update("al_2")])
    assert len(outcomes) == 2 and all(isinstance(o, SinkError) for o in outcomes)


def test_plain_sinks_are_claimed_in_large_batches_and_rich_sinks_in_small_ones(alert_store):
    ids = [f"al_{n}" for n in range(6)]
    alert_store.record([update(a) for a in ids], ["console", "slack"], now=T0)
    console, slack = WatchingSink(alert_store, ids), WatchingThreadSink(alert_store, ids)
    outbox = OutboxDeliverer(alert_store, {"console": console, "slack": slack}, clock=ManualClock(T0),
                             backoff=Backoff(base=1, max_delay=300, jitter=0), batch=2, plain_batch=5)

    assert outbox.run_once() == 5 + 2
    assert [a for a, _ in console.seen] == ids[:5] and [a for a, _ in slack.seen] == ids[:2]
    assert outbox.step() == 0.0  # both claims were full: more is due right away
    assert (len(console.seen), len(slack.seen)) == (6, 4)
    assert outbox.step() == 0.0  # the Slack claim was full again
    assert outbox.step(poll_interval=0.5) == 0.5  # the last two Slack deliveries: no claim was full
    assert statuses(alert_store, "console", ids) == ["delivered"] * 6
    assert statuses(alert_store, "slack", ids) == ["delivered"] * 6


def test_deliveries_to_a_sink_this_worker_lacks_are_kept_beside_the_plain_batch(alert_store):
    alert_store.record([update("al_1")], ["console", "slack"], now=T0)
    console = WatchingSink(alert_store, ["al_1"])
    outbox = deliverer(alert_store, {"console": console})

    assert outbox.run_once() == 1
    assert outbox.last.failed == 1  # no Slack here: retried later, by a worker that has it
    assert statuses(alert_store, "console", ["al_1"]) == ["delivered"]
    assert statuses(alert_store, "slack", ["al_1"]) == ["pending"]
