"""The transactional outbox: stored first, then delivered, retried, resumed — never twice, never lost."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest

from pipeline.alerts import AlertUpdate
from pipeline.clock import ManualClock
from sinks.base import MemorySink, SinkError
from sinks.outbox import Backoff, Delivery, OutboxDeliverer, RichSink
from sinks.store import AlertStore, StoreUnavailable

T0 = datetime(2026, 3, 4, 9, 0, tzinfo=timezone.utc)


def update(alert_id="al_1", severity="warning", revision=1, change="raised") -> AlertUpdate:
    return AlertUpdate(change, {
        "alert_id": alert_id, "customer_id": "C042", "customer_name": "Acme", "detector": "credit_limit",
        "severity": severity, "title": f"{severity}: exposure over limit", "reasons": [], "score": None,
        "raised_at": T0.isoformat(), "updated_at": T0.isoformat(), "event_ids": ["e1"], "status": "open",
        "revision": revision, "threshold_version": None,
    })


class FlakySink:
    """A test double: fails ``failures`` times (optionally asking for ``retry_after``), then accepts."""

    name: ClassVar[str] = "flaky"

    def __init__(self, failures: int = 0, retry_after: float | None = None, permanent: bool = False,
                 error: type[Exception] = SinkError):
        self.failures = failures
        self.retry_after = retry_after
        self.permanent = permanent
        self.error = error
        self.calls: list[AlertUpdate] = []

    def deliver(self, update: AlertUpdate) -> None:
        self.calls.append(update)
        if self.failures > 0:
            self.failures -= 1
            if self.error is SinkError:
                raise SinkError("far side down", retry_after=self.retry_after, permanent=self.permanent)
            raise self.error("sink bug")


class ThreadSink:
    """A test double for a Slack-like sink: posts in the alert's thread, returns channel and ts."""

    name: ClassVar[str] = "slack"

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.seen: list[Delivery] = []

    def send(self, delivery: Delivery) -> dict[str, Any]:
        self.seen.append(delivery)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise SinkError("slack: 503")
        return {"channel": "C0ALERTS", "ts": f"1700000000.{len(self.seen):06d}"}


@pytest.fixture
def clock():
    return ManualClock(T0)


def deliverer(store, sinks, clock, **kwargs) -> OutboxDeliverer:
    return OutboxDeliverer(store, sinks, clock=clock, backoff=Backoff(base=1, max_delay=300, jitter=0), **kwargs)


def delivery_rows(store: AlertStore, alert_id: str = "al_1") -> list[dict]:
    return store.get_alert(alert_id)["deliveries"]


def test_stored_alert_is_delivered_once(alert_store, clock):
    memory = MemorySink()
    alert_store.record([update()], ["memory"], now=clock.now())
    outbox = deliverer(alert_store, {"memory": memory}, clock)
    assert outbox.run_once() == 1
    assert outbox.run_once() == 0
    assert [u.alert_id for u in memory.updates] == ["al_1"]
    assert memory.updates[0].change == "raised" and memory.updates[0].alert["status"] == "open"
    [row] = delivery_rows(alert_store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("delivered", 1, None)


def test_nothing_is_sent_for_an_update_that_was_never_stored(alert_store, clock):
    memory = MemorySink()
    with pytest.raises(ValueError):
        alert_store.record([update(), update("al_2", severity="bogus")], ["memory"], now=clock.now())
    assert deliverer(alert_store, {"memory": memory}, clock).run_once() == 0
    assert memory.updates == []


def test_redelivered_or_replayed_update_is_notified_once(alert_store, clock):
    counting = FlakySink()
    for _ in range(3):  # Kafka redelivers, a replay recomputes the same alert
        alert_store.record([update()], ["flaky"], now=clock.now())
    outbox = deliverer(alert_store, {"flaky": counting}, clock)
    outbox.run_once()
    alert_store.record([update()], ["flaky"], now=clock.now())
    clock.advance(timedelta(hours=1))
    outbox.run_once()
    assert len(counting.calls) == 1


def test_escalation_is_delivered_as_a_second_notification(alert_store, clock):
    memory = MemorySink()
    outbox = deliverer(alert_store, {"memory": memory}, clock)
    alert_store.record([update()], ["memory"], now=clock.now())
    outbox.run_once()
    alert_store.record([update(severity="critical", revision=2, change="escalated")], ["memory"], now=clock.now())
    outbox.run_once()
    assert [(u.change, u.alert["severity"], u.alert["revision"]) for u in memory.updates] == [
        ("raised", "warning", 1), ("escalated", "critical", 2)]


def test_failed_delivery_is_retried_with_doubling_backoff(alert_store, clock):
    sink = FlakySink(failures=3)
    alert_store.record([update()], ["flaky"], now=clock.now())
    outbox = deliverer(alert_store, {"flaky": sink}, clock)
    waits = []
    for _ in range(3):
        assert outbox.run_once() == 0
        [row] = delivery_rows(alert_store)
        next_at = datetime.fromisoformat(row["next_attempt_at"])
        waits.append((next_at - clock.now()).total_seconds())
        clock.set(next_at - timedelta(milliseconds=1))
        assert outbox.run_once() == 0  # not due yet: not attempted
        clock.set(next_at)
    assert waits == [1.0, 2.0, 4.0]
    assert len(sink.calls) == 3
    assert outbox.run_once() == 1
    [row] = delivery_rows(alert_store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("delivered", 4, None)


def test_backoff_doubles_up_to_five_minutes_with_jitter():
    plain = Backoff(base=1, max_delay=300, jitter=0)
    assert [plain.delay(n) for n in (1, 2, 3, 9, 10, 50)] == [1, 2, 4, 256, 300, 300]
    jittered = Backoff(base=1, max_delay=300, jitter=0.2, rng=random.Random(7))
    delays = [jittered.delay(10) for _ in range(200)]
    assert all(240 <= d <= 300 for d in delays) and len(set(delays)) > 100


def test_retry_after_from_the_sink_is_honoured(alert_store, clock):
    sink = FlakySink(failures=1, retry_after=42)
    alert_store.record([update()], ["flaky"], now=clock.now())
    outbox = deliverer(alert_store, {"flaky": sink}, clock)
    outbox.run_once()
    [row] = delivery_rows(alert_store)
    assert datetime.fromisoformat(row["next_attempt_at"]) == T0 + timedelta(seconds=42)
    assert row["last_error"] == "far side down"
    clock.advance(timedelta(seconds=41))
    assert outbox.run_once() == 0 and len(sink.calls) == 1
    clock.advance(timedelta(seconds=1))
    assert outbox.run_once() == 1


def test_permanent_failure_is_not_retried(alert_store, clock):
    sink = FlakySink(failures=1, permanent=True)
    alert_store.record([update()], ["flaky"], now=clock.now())
    outbox = deliverer(alert_store, {"flaky": sink}, clock)
    outbox.run_once()
    clock.advance(timedelta(days=1))
    assert outbox.run_once() == 0
    [row] = delivery_rows(alert_store)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert len(sink.calls) == 1


def test_a_sink_bug_is_retried_not_raised(alert_store, clock):
    sink = FlakySink(failures=1, error=RuntimeError)
    alert_store.record([update()], ["flaky"], now=clock.now())
    outbox = deliverer(alert_store, {"flaky": sink}, clock)
    assert outbox.run_once() == 0
    assert delivery_rows(alert_store)[0]["last_error"] == "RuntimeError: sink bug"
    clock.advance(timedelta(seconds=1))
    assert outbox.run_once() == 1


def test_one_failing_sink_does_not_hold_up_another(alert_store, clock):
    memory, flaky = MemorySink(), FlakySink(failures=5)
    alert_store.record([update()], ["memory", "flaky"], now=clock.now())
    assert deliverer(alert_store, {"memory": memory, "flaky": flaky}, clock).run_once() == 1
    assert len(memory.updates) == 1


def test_restarted_worker_resumes_pending_deliveries(migrated_database_url, clock):
    first = AlertStore(migrated_database_url)
    first.record([update(), update("al_2")], ["flaky"], now=clock.now())
    deliverer(first, {"flaky": FlakySink(failures=10)}, clock).run_once()  # both fail, worker dies
    first.close()

    clock.advance(timedelta(minutes=1))
    second = AlertStore(migrated_database_url)  # a new process on the same database
    try:
        memory = MemorySink()
        assert deliverer(second, {"flaky": memory}, clock).run_once() == 2
        assert sorted(u.alert_id for u in memory.updates) == ["al_1", "al_2"]
        assert second.delivery_counts() == {"delivered": 2}
    finally:
        second.close()


def test_claims_of_a_crashed_deliverer_expire_and_are_taken_over(migrated_database_url, clock):
    first = AlertStore(migrated_database_url)
    first.record([update()], ["memory"], now=clock.now())
    assert len(first.due_deliveries(clock.now(), lease=timedelta(seconds=60))) == 1  # claimed, then the worker dies
    first.close()
    second = AlertStore(migrated_database_url)
    try:
        memory = MemorySink()
        outbox = deliverer(second, {"memory": memory}, clock)
        assert outbox.run_once() == 0  # still claimed: no second delivery in parallel
        clock.advance(timedelta(seconds=60))
        assert outbox.run_once() == 1 and len(memory.updates) == 1
    finally:
        second.close()


def test_two_deliverers_on_one_outbox_never_deliver_the_same_row_twice(migrated_database_url, clock):
    stores = [AlertStore(migrated_database_url) for _ in range(2)]
    try:
        stores[0].record([update(f"al_{i}") for i in range(40)], ["memory"], now=clock.now())
        sinks = [MemorySink(), MemorySink()]
        outboxes = [deliverer(store, {"memory": sink}, clock, batch=7) for store, sink in zip(stores, sinks)]
        barrier = threading.Barrier(2)

        def drain(outbox):
            barrier.wait()
            while outbox.run_once():
                pass

        threads = [threading.Thread(target=drain, args=(outbox,)) for outbox in outboxes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        delivered = [u.alert_id for sink in sinks for u in sink.updates]
        assert sorted(delivered) == sorted(f"al_{i}" for i in range(40))
    finally:
        for store in stores:
            store.close()


def test_thread_sink_gets_kind_change_and_the_parent_reference(alert_store, clock):
    slack = ThreadSink()
    assert isinstance(slack, RichSink)
    outbox = deliverer(alert_store, {"slack": slack}, clock)
    alert_store.record([update()], ["slack"], now=clock.now())
    outbox.run_once()
    alert_store.record([update(severity="critical", revision=2, change="escalated")], ["slack"], now=clock.now())
    alert_store.change_status("al_1", "acknowledged", "anna", "calling them", now=clock.now())
    outbox.run_once()
    outbox.run_once()
    assert [(d.kind, d.change, d.revision) for d in slack.seen] == [
        ("alert", "raised", 1), ("alert", "escalated", 2), ("status_change", "acknowledged", 2)]
    parent = {"channel": "C0ALERTS", "ts": "1700000000.000001"}
    assert slack.seen[0].refs == () and slack.seen[1].thread == parent and slack.seen[2].thread == parent
    change = slack.seen[2].status_change
    assert (change["by"], change["from_status"], change["to_status"], change["note"]) == (
        "anna", "open", "acknowledged", "calling them")
    alert = alert_store.get_alert("al_1")
    assert (alert["slack_channel"], alert["slack_ts"]) == ("C0ALERTS", "1700000000.000001")


def test_follow_ups_wait_until_the_first_message_is_delivered(alert_store, clock):
    slack = ThreadSink(fail_first=1)
    outbox = deliverer(alert_store, {"slack": slack}, clock)
    alert_store.record([update()], ["slack"], now=clock.now())
    outbox.run_once()  # the first message fails
    alert_store.record([update(severity="critical", revision=2, change="escalated")], ["slack"], now=clock.now())
    clock.advance(timedelta(minutes=10))
    outbox.run_once()  # only the first message is retried; the escalation waits behind it
    outbox.run_once()
    assert [(d.change, d.attempt) for d in slack.seen] == [("raised", 1), ("raised", 2), ("escalated", 1)]
    assert slack.seen[2].thread == {"channel": "C0ALERTS", "ts": "1700000000.000002"}


def test_plain_sinks_skip_status_changes_but_still_get_alerts(alert_store, clock):
    memory = MemorySink()
    outbox = deliverer(alert_store, {"memory": memory}, clock)
    alert_store.record([update()], ["memory"], now=clock.now())
    alert_store.change_status("al_1", "acknowledged", "anna", now=clock.now())
    outbox.run_once()
    outbox.run_once()
    assert len(memory.updates) == 1
    assert [(d["kind"], d["status"]) for d in delivery_rows(alert_store)] == [
        ("alert", "delivered"), ("status_change", "skipped")]


def test_a_sink_missing_from_this_worker_keeps_its_deliveries(alert_store, clock):
    alert_store.record([update()], ["slack"], now=clock.now())
    deliverer(alert_store, {}, clock).run_once()
    [row] = delivery_rows(alert_store)
    assert row["status"] == "pending" and "no sink named 'slack'" in row["last_error"]
    clock.advance(timedelta(minutes=5))
    assert deliverer(alert_store, {"slack": ThreadSink()}, clock).run_once() == 1


def test_unreachable_store_raises_store_unavailable_and_run_forever_waits_it_out(clock):
    store = AlertStore("postgresql://postgres@127.0.0.1:1/x", connect_timeout=1)
    outbox = deliverer(store, {"memory": MemorySink()}, clock)
    try:
        with pytest.raises(StoreUnavailable):
            outbox.run_once()

        async def run_briefly() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(outbox.run_forever(stop, poll_interval=0.01))
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(task, 5)

        asyncio.run(run_briefly())  # no exception escapes; it stops when told
    finally:
        store.close()


def test_run_forever_delivers_until_stopped(alert_store):
    memory = MemorySink()
    alert_store.record([update(), update("al_2")], ["memory"])
    outbox = OutboxDeliverer(alert_store, {"memory": memory})

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(outbox.run_forever(stop, poll_interval=0.02))
        for _ in range(200):
            if len(memory.updates) == 2:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(run())
    assert sorted(u.alert_id for u in memory.updates) == ["al_1", "al_2"]


def test_run_in_thread_delivers_until_stopped(alert_store):
    memory = MemorySink()
    alert_store.record([update()], ["memory"])
    stop = threading.Event()
    thread = OutboxDeliverer(alert_store, {"memory": memory}).run_in_thread(stop, poll_interval=0.02)
    for _ in range(200):
        if memory.updates:
            break
        stop.wait(0.02)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and len(memory.updates) == 1
