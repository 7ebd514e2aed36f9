"""Two ``creditwatch worker`` processes in one consumer group on the embedded broker.

Issues: "two workers on 8 partitions; SIGKILL one in the middle of a
50,000-event stream → the other takes over its partitions; the final
per-customer state equals the offline ledger for the same events, and each
expected alert is stored exactly once", and "with several workers, each
customer's state is owned by exactly one of them".

One test, in phases. The two workers share one alert store, a PostgreSQL
schema, as replicas share one database in a deployment (two processes writing
one SQLite file mostly wait for its lock).

1. Both workers start. Which partitions a worker owns is what its own
   ``/metrics`` says: ``creditwatch_consumer_lag`` has one series per input
   partition it is assigned (the embedded broker's DescribeGroups does not
   tell assignments; it does tell how many members the group has). The test
   waits until the two sets are disjoint, cover all 8 partitions of every
   input topic and have stayed so for 6 s.
2. Events are published in chunks, at most ``WINDOW`` ahead of the offsets
   the group committed, so that publishing goes on until the end. Every few
   seconds both workers' partitions are sampled again: no partition may change
   hands while both run. At 30 % publishing pauses until everything is
   committed, and each worker's counters (events applied + duplicates skipped
   + dead letters) must be exactly the records of its own partitions: neither
   worker processed an event of the other's, so no customer was processed by
   both.
3. From 50 % committed on, worker b is SIGKILLed at the first moment it has
   written the state of events to the changelog whose offsets it has not
   committed (changelog ends of its partitions grown while their committed
   offsets stood still), confirmed with b stopped (SIGSTOP), so the committed
   offsets and changelog ends taken then are exactly what b leaves behind.
4. Publishing goes on; worker a must own all 8 partitions (its ``/metrics``;
   the group has one member) and commit every event. Both workers' clocks
   tick every 200 ms, so ticks fall inside the restores of the table that
   each rebalance brings; a tick that read a half-restored table would cache
   old states, and the events after the takeover would be applied to them.
5. Judged: every record was published to the partition murmur2 gives its key
   (``streams.app.key_partition``), and every customer's changelog records lie
   in that one partition only; every customer's canonical ledger state and its
   positions equal the offline replay's (``pipeline.ledger.replay``);
   ``events_applied`` equals its distinct event count, although a read again
   what b had applied past its commits (counted from the changelog at the
   kill); the alerts of the detectors whose firing depends neither on "today"
   nor on the order across topics (``CLOCK_FREE``; the generator gives some
   customers a legal event, a bank-details or ownership change, a payment
   reversal) are the offline backtest's, each stored once with one "raised"
   history entry, and no stored alert of any detector was raised twice.

The event count is ``CREDITWATCH_TEST_MULTI_WORKER_EVENTS`` (default 50,000);
a phase fails when the committed offsets (or, before the stream, the workers'
partitions) stop moving for ``STALL`` seconds, not at a fixed deadline. The
throughput is printed. Most of the run is the workers' store writes (one
statement per event, per touched customer and per alert), so on a busy machine
it takes minutes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

import pytest

from pipeline.events import parse_event
from pipeline.ledger import CustomerState, canonical, position, replay
from streams.admin import high_watermarks
from streams.app import changelog_topic_name, key_partition
from streams.broker import free_port
from tests.worker_harness import (
    as_records,
    Metrics,
    Published,
    WorkerProcess,
    cli_env,
    committed_offsets,
    end_offsets,
    invoice_issued,
    payment_received,
    publish,
    registered,
    scrape_metrics,
    settings_of,
    stamp,
    state_difference,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = int(os.environ.get("CREDITWATCH_TEST_MULTI_WORKER_EVENTS", "50000"))
PARTITIONS = 8
#: CREDITWATCH_BATCH_MAX and CREDITWATCH_BATCH_WAIT_MS of the workers. The test publishes in chunks, so a
#: worker is often caught up, and then a batch closes after the wait (a backlog keeps it filling longer, see
#: CommitThenAckStream.take_batches); a long wait makes fewer, larger batches, each one store transaction.
BATCH_MAX = 2000
BATCH_WAIT_MS = 250
#: Clock ticks this often, so that some run while a takeover recovers the table (they must wait for it).
TICK_INTERVAL_MS = 200
#: A phase fails when the group's committed offsets have not moved for this long.
STALL = 120.0
#: Published at a time, and how far publishing may run ahead of the group's committed offsets.
CHUNK = max(min(2000, EVENTS // 20), 100)
WINDOW = max(EVENTS // 6, 2 * CHUNK)
#: Detectors whose alert ids depend neither on the wall clock nor on the order across topics
#: (see tests/test_end_to_end.py); the generator makes each fire at most once per customer.
CLOCK_FREE = frozenset({"legal_event", "bank_details_change", "ownership_change", "payment_reversed"})
#: The event types they fire on.
ALERTING_TYPES = frozenset({"customer.legal_event", "customer.bank_details_changed", "customer.ownership_changed",
                            "payment.reversed"})


# --- the events ------------------------------------------------------------------------


def portfolio_events(customers: int, total: int, seed: int, start: date, duplicates: float = 0.02) -> list[dict[str, Any]]:
    """Exactly ``total`` events for ``customers`` customers over about 110 days from ``start``, in time order.

    Like ``tests/test_worker.generated_events`` (registrations, invoices,
    payments naming an invoice or not, about ``duplicates`` re-sent copies,
    each after the event it repeats),
    plus, for some customers, one event each that raises an alert whatever
    "today" is and whatever the order across topics: a legal event, a
    bank-details change, an ownership change, a reversal of one of its
    payments (a few days after it, on the same topic and partition). Nothing is
    old enough to be retired, so canonical state does not depend on arrival order.

    The test starts the events tomorrow, as a live stream's events are about
    now: with the real clock months past them, every invoice would be overdue
    and each event would re-raise overdue, limit-review and risk alerts, four
    times the store and outbox work, none of which this test judges.
    """
    rng = random.Random(seed)
    resent = int(total * duplicates)
    specials = {
        "legal": [rng.random() < 0.10 for _ in range(customers)],
        "bank": [rng.random() < 0.10 for _ in range(customers)],
        "owner": [rng.random() < 0.06 for _ in range(customers)],
        "reversal": [rng.random() < 0.12 for _ in range(customers)],
    }
    fixed = customers + sum(sum(flags) for flags in specials.values())
    regular, extra = divmod(total - resent - fixed, customers)
    assert regular >= 3, f"{total} events are too few for {customers} customers"
    events: list[dict[str, Any]] = []
    for c in range(customers):
        customer_id = f"K{c:04d}"
        events.append(registered(customer_id, c, start, rng.randint(10, 500) * 1000))
        invoices: list[str] = []
        payments: list[tuple[str, date]] = []
        wants_payment = specials["reversal"][c]
        for n in range(regular + (c < extra)):
            day = start + timedelta(days=rng.randint(1, 100))
            hour = rng.randint(7, 18)
            if not invoices or (rng.random() < 0.5 and not (wants_payment and not payments and n == regular - 1)):
                amount = f"{rng.randint(10_000, 5_000_000) / 100:.2f}"
                body = invoice_issued(customer_id, n, day, hour, amount, rng.choice(["EUR", "EUR", "USD"]))
                invoices.append(body["invoice_id"])
                events.append(body)
            else:
                body = payment_received(customer_id, n, day, hour, f"{rng.randint(1_000, 3_000_000) / 100:.2f}")
                if rng.random() < 0.6:
                    body["invoice_id"] = rng.choice(invoices)
                payments.append((body["payment_id"], day))
                events.append(body)
        if specials["legal"][c]:
            day = start + timedelta(days=rng.randint(10, 100))
            events.append({
                "event_id": f"{customer_id}-legal", "type": "customer.legal_event", "customer_id": customer_id,
                "occurred_at": stamp(day, 5), "description": "reported by the credit bureau",
                "kind": rng.choice(["insolvency_filing", "court_judgment", "liquidation", "other"]),
            })  # fmt: skip
        if specials["bank"][c]:
            day = start + timedelta(days=rng.randint(10, 100))
            events.append({"event_id": f"{customer_id}-bank", "type": "customer.bank_details_changed",
                           "customer_id": customer_id, "occurred_at": stamp(day, 4)})  # fmt: skip
        if specials["owner"][c]:
            day = start + timedelta(days=rng.randint(10, 100))
            events.append({"event_id": f"{customer_id}-owner", "type": "customer.ownership_changed",
                           "customer_id": customer_id, "occurred_at": stamp(day, 3),
                           "description": "acquired by a holding company"})  # fmt: skip
        if specials["reversal"][c]:
            assert payments, customer_id
            payment_id, day = rng.choice(payments)
            events.append({
                "event_id": f"{customer_id}-reversal", "type": "payment.reversed", "customer_id": customer_id,
                "occurred_at": stamp(day + timedelta(days=rng.randint(1, 10)), 20, 30), "payment_id": payment_id,
                "reason": rng.choice(["bounced", "chargeback"]),
            })  # fmt: skip
    events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
    for _ in range(resent):  # a re-sent copy comes after the event it repeats
        source = rng.randrange(len(events))
        events.insert(rng.randrange(max(source + 1, len(events) // 2), len(events) + 1), dict(events[source]))
    assert len(events) == total
    seen: set[str] = set()
    firsts = [body["occurred_at"] for body in events if not (body["event_id"] in seen or seen.add(body["event_id"]))]
    assert firsts == sorted(firsts), "each event's first copy must arrive in time order (see offline())"
    return events


#: Days after the first event on which each customer's position is compared with the offline ledger's.
DAYS = (45, 104, 181)


def offline(lines: list[bytes], ledger: Any, days: tuple[date, ...]) -> dict[str, Any]:
    """What the offline ledger and backtest make of the events (run in a child process, beside the workers).

    * ``canonical``/``positions``: each customer's canonical state and its
      positions on ``days``, from ``pipeline.ledger.replay`` in publishing order;
    * ``alerts``: the backtest's alerts of the CLOCK_FREE detectors, by alert_id
      (latest revision). The backtest runs with the default thresholds the
      workers use, but without the online models and only over the customers
      that have an event such a detector fires on: these detectors' alert ids
      depend on nothing but the customer's own events (the models only change
      a change alert's severity), and that keeps the backtest to seconds.
      The backtest takes events in time order, the workers in arrival order:
      the same here, as re-sent copies (skipped by both) come after their
      originals. A reversal's copy that arrived before its payment would make
      the worker's alert (triggered by the payment, as the reversal is held)
      another alert than the backtest's (triggered by the reversal).
    """
    from detectors.config import load_thresholds
    from pipeline.backtest import build_engine, run_backtest

    events = [parse_event(line) for line in lines]
    states = replay(events, ledger)
    concerned = {e.customer_id for e in events if e.type in ALERTING_TYPES}
    result = run_backtest([line for line, e in zip(lines, events) if e.customer_id in concerned],
                          build_engine(load_thresholds(None), ledger, with_models=False))
    assert not result.rejected, result.rejected[:5]
    return {
        "canonical": {c: canonical(s) for c, s in states.items()},
        "positions": {c: [position(s, day, ledger).to_json() for day in days] for c, s in states.items()},
        "alerts": {aid: a for aid, a in result.alerts.items() if a["detector"] in CLOCK_FREE},
    }


# --- watching the workers -----------------------------------------------------------------




def owned_partitions(metrics: Metrics, topics: Iterable[str]) -> dict[str, frozenset[int]]:
    """{input topic: partitions} a worker reports lag for, i.e. owns (the series are refreshed every 5 s)."""
    owned: dict[str, set[int]] = {topic: set() for topic in topics}
    for labels, _ in metrics.get("creditwatch_consumer_lag", []):
        owned[labels["topic"]].add(int(labels["partition"]))
    return {topic: frozenset(partitions) for topic, partitions in owned.items()}


def same_on_every_topic(view: Mapping[str, frozenset[int]]) -> frozenset[int] | None:
    """The partitions a worker owns if they are the same on all its (co-partitioned) input topics."""
    distinct = set(view.values())
    return distinct.pop() if len(distinct) == 1 else None


def consumed(metrics: Metrics) -> dict[str, int]:
    """What a worker took from its input: events applied, duplicates skipped, messages dead-lettered."""
    return {
        "applied": int(sum(value for _, value in metrics.get("creditwatch_events_processed_total", []))),
        "duplicates": int(sum(value for _, value in metrics.get("creditwatch_events_duplicate_total", []))),
        "dead_lettered": int(sum(value for _, value in metrics.get("creditwatch_events_dead_lettered_total", []))),
    }


def group_members(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, number of members) of a consumer group, as the broker describes it.

    The embedded broker leaves the members' assignments empty in DescribeGroups
    (and kafka-python cannot decode its answer), so which member owns what comes
    from the workers' /metrics; the broker confirms how many members there are.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    async def describe() -> tuple[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            responses = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        for response in responses:
            for error_code, group_id, state, _protocol_type, _protocol, members, *_ in response.groups:
                if group_id == group:
                    assert error_code == 0, f"DescribeGroups({group}) failed with error code {error_code}"
                    return state, len(members)
        raise AssertionError(f"group {group} not described")

    return asyncio.run(describe())


class GroupOffsets:
    """The consumer group's committed offsets, polled through one admin client."""

    def __init__(self, bootstrap: str, group: str, topics: Iterable[str]):
        from kafka import KafkaAdminClient

        self.group = group
        self.topics = set(topics)
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="creditwatch-tests")

    def __call__(self) -> dict[tuple[str, int], int]:
        offsets = self.admin.list_group_offsets({self.group: None})[self.group]
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()
                if meta.offset >= 0 and tp.topic in self.topics}

    def close(self) -> None:
        self.admin.close()


class ChangelogEnds:
    """The changelog's end offsets (Fetch high watermarks, fresh at every call) through one client."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async def start() -> Any:
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
            await consumer.start()
            await consumer.topics()  # metadata (the leaders), without creating anything
            return consumer

        self.loop = asyncio.new_event_loop()
        self.consumer = self.loop.run_until_complete(start())
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    def __call__(self) -> dict[int, int]:
        from streams.transport import fetch_high_watermarks

        ends = self.loop.run_until_complete(
            fetch_high_watermarks(self.consumer._client, self.tps, {tp: 0 for tp in self.tps}))
        return {tp.partition: end for tp, end in ends.items()}

    def close(self) -> None:
        self.loop.run_until_complete(self.consumer.stop())
        self.loop.close()


def read_changelog(bootstrap: str, topic: str, ends: Mapping[int, int], timeout: float = 300) -> list[Any]:
    """Every record of ``topic`` below ``ends[partition]``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             allow_auto_create_topics=False, fetch_max_wait_ms=20)
    try:
        tps = {TopicPartition(topic, p): end for p, end in ends.items() if end > 0}
        consumer.assign(list(tps))
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        remaining = set(tps)
        deadline = time.monotonic() + timeout
        while remaining:
            for tp, batch in consumer.poll(timeout_ms=200, max_records=10_000).items():
                records.extend(r for r in batch if r.offset < tps[tp])
            remaining = {tp for tp in remaining if consumer.position(tp) < tps[tp]}
            assert time.monotonic() < deadline, f"{topic}: still reading {sorted(remaining)} after {timeout:g}s"
        return records
    finally:
        consumer.close()


def latest_states(records: Iterable[Any]) -> dict[str, CustomerState]:
    """Each key's last record, decoded: the customers' ledger states (what streams.state_reader reads)."""
    from pipeline.engine import decode_record

    latest: dict[bytes, bytes] = {}
    for record in records:
        latest[record.key] = record.value
    return {key.decode(): decode_record(value).ledger for key, value in latest.items()}


def first_difference(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """Where the first customer whose views differ differs, in a few hundred characters."""
    for customer_id in sorted(expected):
        got, want = actual.get(customer_id), expected[customer_id]
        if got != want:
            if not isinstance(got, dict) or not isinstance(want, dict):
                return f"{customer_id}: {str(got)[:200]} != {str(want)[:200]}"
            fields = [key for key in {*got, *want} if got.get(key) != want.get(key)]
            key = sorted(fields)[0]
            return (f"{customer_id} differs in {sorted(fields)}; {key}: worker {str(got.get(key))[:300]} "
                    f"!= offline {str(want.get(key))[:300]}")
    return "none"


def stored_alerts(url: str) -> tuple[dict[str, tuple[str, str]], Counter[tuple[str, str]]]:
    """({alert_id: (customer_id, detector)} of every stored alert, Counter of (alert_id, history change))."""
    from sqlalchemy import select

    from sinks.store import Alert, AlertHistory, make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            alerts = {aid: (customer, detector) for aid, customer, detector in
                      connection.execute(select(Alert.alert_id, Alert.customer_id, Alert.detector))}
            history = Counter((aid, change) for aid, change in
                              connection.execute(select(AlertHistory.alert_id, AlertHistory.change)))
    finally:
        engine.dispose()
    return alerts, history


@pytest.fixture
def offline_pool():
    """One child process for the offline side, which then runs beside the workers."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def shared_store(postgres_database):
    """An empty schema in the session's PostgreSQL database: the alert store both workers share."""
    from tests.databases import postgres_schema

    with postgres_schema(postgres_database) as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def pair(tmp_path):
    """Starts the two workers (the store migrated once, by the first); SIGKILLs any still running at the end."""
    started: list[WorkerProcess] = []

    def start(envs: Mapping[str, Mapping[str, str]]) -> dict[str, WorkerProcess]:
        for n, (name, env) in enumerate(envs.items()):
            started.append(WorkerProcess(env, tmp_path / "workers", name=f"worker-{name}").start(migrate=n == 0))
        return dict(zip(envs, started))

    yield start
    for worker in started:
        worker.stop_quietly()


# --- the test ------------------------------------------------------------------------------


def test_two_workers_own_disjoint_customers_and_one_takes_over_exactly_once_when_the_other_is_killed_mid_stream(
    broker, unique_prefix, tmp_path, offline_pool, shared_store, pair
):
    began = time.monotonic()
    group = f"{unique_prefix}worker"
    ports = {"a": free_port(), "b": free_port()}
    envs = {
        name: cli_env(broker, unique_prefix, group, tmp_path / f"data-{name}", CREDITWATCH_HEALTH_PORT=port,
                      CREDITWATCH_DATABASE_URL=shared_store, CREDITWATCH_PARTITIONS=PARTITIONS,
                      CREDITWATCH_BATCH_MAX=BATCH_MAX, CREDITWATCH_BATCH_WAIT_MS=BATCH_WAIT_MS,
                      CREDITWATCH_TICK_INTERVAL_MS=TICK_INTERVAL_MS)
        for name, port in ports.items()
    }
    settings = settings_of(envs["a"])
    bootstrap, inputs = settings.bootstrap_servers, settings.input_topics
    changelog = changelog_topic_name(settings)
    everything = frozenset(range(PARTITIONS))

    customers = max(EVENTS // 20, 8)
    first_day = datetime.now(timezone.utc).date() + timedelta(days=1)
    events = portfolio_events(customers, EVENTS, seed=20, start=first_day)
    days = tuple(first_day + timedelta(days=n) for n in DAYS)
    records = as_records(settings, events)
    ids: dict[str, set[str]] = defaultdict(set)
    for body in events:
        ids[body["customer_id"]].add(body["event_id"])
    resent = len(events) - sum(map(len, ids.values()))
    computing = offline_pool.submit(offline, [value for _, _, value in records], settings.ledger, days)

    # 1. Both workers up; by their own /metrics, each owns a disjoint half of the partitions.
    started = pair(envs)
    for worker in started.values():
        worker.wait_ready(timeout=180)

    def views() -> dict[str, dict[str, frozenset[int]]]:
        return {name: owned_partitions(scrape_metrics(port), inputs) for name, port in ports.items()}

    def split(view: Mapping[str, Mapping[str, frozenset[int]]]) -> dict[str, frozenset[int]] | None:
        """Each worker's partitions, if the two are disjoint and cover all of them (on every input topic)."""
        a, b = same_on_every_topic(view["a"]), same_on_every_topic(view["b"])
        if a and b and a.isdisjoint(b) and a | b == everything:
            return {"a": a, "b": b}
        return None

    settled_since, seen = time.monotonic(), None
    while True:  # the same split for 6 s: each worker has refreshed its view (every 5 s) since
        current = views()
        if current != seen:
            settled_since, seen = time.monotonic(), current
        elif split(current) and time.monotonic() - settled_since >= 6:
            break
        for worker in started.values():
            assert worker.alive(), f"{worker.name} died:\n{worker.stderr_tail()}"
        assert time.monotonic() - settled_since < STALL, (
            f"the workers' partitions stayed {current} for {STALL:g}s without splitting the {PARTITIONS} partitions")
        time.sleep(0.5)
    ownership = split(seen)
    assert ownership is not None
    assert group_members(bootstrap, group) == ("Stable", 2)
    print(f"\n{len(events)} events ({resent} re-sent copies) for {customers} customers; both workers ready "
          f"{time.monotonic() - began:.1f}s after the start, partitions a={sorted(ownership['a'])}, "
          f"b={sorted(ownership['b'])}")

    # 2. Publish in chunks, never more than WINDOW ahead of the committed offsets; sample who owns what.
    committed_now = GroupOffsets(bootstrap, group, inputs)
    published: list[Published] = []
    samples = 0

    def check_ownership() -> None:
        nonlocal samples
        current = views()
        assert current == seen, f"partitions changed hands while both workers ran: {seen} -> {current}"
        samples += 1

    def step(live: Iterable[WorkerProcess], what: str, upto: int = len(records)) -> int:
        """Publish the next chunk (up to record ``upto``) if the window allows; return the events committed so far."""
        committed = sum(committed_now().values())
        if len(published) < upto and len(published) - committed < WINDOW:
            published.extend(publish(bootstrap, records[len(published):min(len(published) + CHUNK, upto)], linger_ms=5))
        else:
            time.sleep(0.2)
        for worker in live:
            assert worker.alive(), f"{worker.name} died while {what}:\n{worker.stderr_tail()}"
        return committed

    def drive(done: Callable[[int], bool], what: str, live: Iterable[WorkerProcess], sample: bool,
              upto: int = len(records)) -> None:
        """step() until done(committed); fail if the committed offsets do not move for STALL seconds."""
        progress, moved, last_sample = -1, time.monotonic(), 0.0
        while True:
            committed = step(live, what, upto)
            if done(committed):
                return
            if committed != progress:
                progress, moved = committed, time.monotonic()
            assert time.monotonic() - moved < STALL, (
                f"{what}: no progress for {STALL:g}s ({committed} of {len(published)} published events committed)")
            if sample and time.monotonic() - last_sample >= 3:
                check_ownership()
                last_sample = time.monotonic()

    stream_began = time.monotonic()
    checkpoint = max(int(EVENTS * 0.3) // CHUNK, 1) * CHUNK
    drive(lambda committed: len(published) == checkpoint and committed >= checkpoint,
          "streaming to the checkpoint", started.values(), sample=True, upto=checkpoint)
    check_ownership()
    # All published so far is committed: each worker took exactly the records of its own partitions.
    mine = {name: [i for i, p in enumerate(published) if p.partition in partitions]
            for name, partitions in ownership.items()}
    for name, port in ports.items():
        counts = consumed(scrape_metrics(port))
        distinct = {events[i]["event_id"] for i in mine[name]}
        assert counts == {"applied": len(distinct), "duplicates": len(mine[name]) - len(distinct), "dead_lettered": 0}, (
            f"worker {name} took {counts} from its input, but its partitions {sorted(ownership[name])} hold "
            f"{len(mine[name])} of the {len(published)} records published ({len(distinct)} distinct events)")
    at_checkpoint = time.monotonic()
    print(f"checkpoint after {at_checkpoint - stream_began:.1f}s of streaming: the {len(published)} events published "
          f"so far are committed; worker a took exactly the {len(mine['a'])} records of its partitions, worker b "
          f"the {len(mine['b'])} of its own")

    # 3. From half the stream on, SIGKILL worker b at a moment when it has written the state of events to the
    # changelog whose offsets it has not committed yet: its partitions' changelog ends (Hb) have grown since
    # the committed offsets of its partitions (Cb) were first seen at their current value. A candidate
    # moment is confirmed with b stopped (SIGSTOP), so what is seen then is exactly what b leaves behind.
    drive(lambda committed: committed >= EVENTS // 2, "streaming to half the stream", started.values(), sample=True)
    check_ownership()
    victim, survivor = started["b"], started["a"]
    changelog_now = ChangelogEnds(bootstrap, changelog, PARTITIONS)

    def look() -> tuple[dict[tuple[str, int], int], dict[int, int], int, int]:
        committed, ends = committed_now(), changelog_now()  # in this order: see above
        return (committed, ends, sum(o for (_, p), o in committed.items() if p in ownership["b"]),
                sum(e for p, e in ends.items() if p in ownership["b"]))

    reference: tuple[int, int] | None = None
    hunt_began = time.monotonic()
    while True:
        _, _, cb, hb = look()
        if reference is not None and reference[0] == cb and hb > reference[1]:
            victim.process.send_signal(signal.SIGSTOP)
            committed_at_kill, changelog_at_kill, cb, hb = look()
            if reference[0] == cb and hb > reference[1]:
                victim.kill()
                break
            victim.process.send_signal(signal.SIGCONT)
        if reference is None or reference[0] != cb:
            reference = (cb, hb)
        assert time.monotonic() - hunt_began < STALL, (
            f"worker b had no state in the changelog beyond its commits within {STALL:g}s of half the stream")
        if len(published) < len(records) and len(published) - sum(committed_now().values()) < WINDOW:
            step(started.values(), "waiting for the moment to kill worker b")
        else:
            assert victim.alive(), victim.stderr_tail()
            time.sleep(0.02)
    changelog_now.close()
    killed_at = time.monotonic()
    published_at_kill = len(published)
    print(f"worker b SIGKILLed {killed_at - stream_began:.1f}s into the stream, {killed_at - hunt_began:.1f}s after "
          f"half was committed: {sum(committed_at_kill.values())} events committed, {published_at_kill} published; "
          f"its partitions' changelog had {hb - reference[1]} records beyond its last commit; {samples} samples "
          f"of who owns what while both ran, all the same")
    assert published_at_kill < len(records), "the stream had ended before the kill"
    with_both = sum(committed_at_kill.values())

    # 4. The survivor takes over every partition and finishes the stream.
    takeover: float | None = None

    def taken_over(committed: int) -> bool:
        nonlocal takeover
        if owned_partitions(scrape_metrics(ports["a"]), inputs) == {topic: everything for topic in inputs}:
            takeover = time.monotonic() - killed_at
        return takeover is not None

    drive(taken_over, "waiting for the takeover", [survivor], sample=False)
    assert group_members(bootstrap, group) == ("Stable", 1)
    print(f"worker a owns all {PARTITIONS} partitions {takeover:.1f}s after the kill")
    drive(lambda committed: len(published) == len(records) and committed >= len(records),
          "finishing the stream", [survivor], sample=False)
    finished = time.monotonic()
    committed_now.close()
    ends = end_offsets(bootstrap, inputs)
    assert sum(ends.values()) == len(records)
    assert all(committed_offsets(bootstrap, group).get(tp, 0) >= end for tp, end in ends.items())
    print(f"all {len(records)} events committed {finished - stream_began:.1f}s into the stream: "
          f"{len(records) / (finished - stream_began):,.0f} events/s overall; "
          f"{with_both / (killed_at - stream_began):,.0f}/s with both workers (to the kill), "
          f"{(len(records) - with_both) / (finished - killed_at):,.0f}/s from the kill on")

    # 5. Where the state lives: each customer's changelog records in one partition, its key's.
    for p in published:
        assert p.partition == key_partition(p.key, PARTITIONS), f"{p.key!r} was published to partition {p.partition}"
    final = read_changelog(bootstrap, changelog, high_watermarks(bootstrap, changelog))
    homes: dict[str, set[int]] = defaultdict(set)
    for record in final:
        homes[record.key.decode()].add(record.partition)
    assert set(homes) == set(ids)
    strays = {c: sorted(ps) for c, ps in homes.items() if ps != {key_partition(c.encode(), PARTITIONS)}}
    assert not strays, f"customers with changelog records outside their key's partition: {list(strays.items())[:5]}"
    by_owner = Counter("a" if next(iter(partitions)) in ownership["a"] else "b" for partitions in homes.values())
    assert by_owner["a"] and by_owner["b"], by_owner

    # The state is the offline ledger's; every event was applied once.
    states = latest_states(final)
    expected = computing.result(timeout=300)
    live = {c: canonical(s) for c, s in states.items()}
    difference = state_difference(live, expected["canonical"])
    assert difference == "equal", (
        f"final state differs from the offline ledger: {difference}; first difference: "
        f"{first_difference(live, expected['canonical'])}")
    for customer_id, want in expected["positions"].items():
        got = [position(states[customer_id], day, settings.ledger).to_json() for day in days]
        assert got == want, f"{customer_id}: positions on {days} differ from the offline ledger's"
    twice = {c: (s.events_applied, len(ids[c])) for c, s in states.items() if s.events_applied != len(ids[c])}
    assert not twice, f"(events applied, distinct events) differ for {len(twice)} customers: {list(twice.items())[:5]}"

    # What b had applied and written to the changelog but not committed: read again by a, and skipped.
    at_kill = latest_states(r for r in final if r.offset < changelog_at_kill.get(r.partition, 0))
    where: dict[str, Published] = {}
    for body, p in zip(events, published):
        where.setdefault(body["event_id"], p)
    replayed = [
        event_id
        for customer_id, state in at_kill.items() if key_partition(customer_id.encode(), PARTITIONS) in ownership["b"]
        for event_id in state.seen
        if where[event_id].offset >= committed_at_kill.get((where[event_id].topic, where[event_id].partition), 0)
    ]
    survivor_metrics = scrape_metrics(ports["a"])
    survivor_counts = consumed(survivor_metrics)
    # The survivor restored its table at start, when b joined and when b died; its clock ticked every
    # TICK_INTERVAL_MS meanwhile, and a tick that came during a restore waited for it (see streams.app).
    restores = int(sum(value for _, value in survivor_metrics.get("creditwatch_table_restores_total", [])))
    deferred = int(sum(value for _, value in survivor_metrics.get("creditwatch_clock_ticks_deferred_total", [])))
    print(f"worker a restored its table {restores} times; {deferred} clock ticks waited for a restore to end")
    assert restores >= 2, f"worker a's table was restored {restores} times, although it took over b's partitions"
    print(f"{by_owner['a']} customers live on a's partitions, {by_owner['b']} on b's; b had applied "
          f"{len(replayed)} events beyond its committed offsets, which a read again and skipped as already "
          f"applied (a skipped {survivor_counts['duplicates']} events in all; {resent} re-sent copies were published)")
    assert replayed, "worker b had nothing beyond its commits in the changelog: the replay was not tested"
    assert survivor_counts["duplicates"] >= len(replayed)

    # Each expected alert stored once; no stored alert raised twice.
    alerts, history = stored_alerts(shared_store)
    stored = {aid: row for aid, row in alerts.items() if row[1] in CLOCK_FREE}
    wanted = {aid: (a["customer_id"], a["detector"]) for aid, a in expected["alerts"].items()}
    assert len(wanted) > customers // 5, len(wanted)
    missing, unexpected = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    assert not missing and not unexpected, (
        f"{len(missing)} expected alerts not stored (e.g. {[wanted[a] for a in missing[:3]]}), "
        f"{len(unexpected)} unexpected ones stored (e.g. {[stored[a] for a in unexpected[:3]]})")
    assert stored == wanted
    raised = {aid: history[(aid, "raised")] for aid in alerts}
    assert all(count == 1 for count in raised.values()), (
        f"alerts without exactly one 'raised' history entry: {[(a, n) for a, n in raised.items() if n != 1][:5]}")
    print(f"{len(wanted)} expected alerts ({dict(Counter(d for _, d in wanted.values()))}) stored, once each; "
          f"{len(alerts)} alerts stored in all, each raised once; the test took {time.monotonic() - began:.1f}s")
