"""The faust app: three co-partitioned input topics → one agent → one Table.

One agent reads ``credit.invoices``, ``credit.payments`` and
``credit.customers`` (all keyed by customer_id, same partition count), so the
worker that owns partition *p* owns every event of the customers hashed to
*p* and their record in partition *p* of the changelog. No repartition.

The agent works in batches (``take_events``): the batch goes through the
engine, then it is committed while the agent reads and works on the next one:
its alerts are committed to the store (``WorkerRuntime.store_prepared``),
each touched customer is written to the Table once, and the changelog records
and dead letters are acknowledged by the broker before the batch's source
offsets are acknowledged to faust (``CommitThenAckStream``), which commits
them later. So a committed offset never runs ahead of the state and the
alerts that event produced. At most two batches are in commit at once: their
stores run in batch order, and so do their table writes and acknowledgements;
ticks, model checkpoints, revocations and shutdown wait for them. A failure
inside a batch or its commit ends the process without acknowledging anything;
on restart the batch is read again, and the ledger's and the store's
idempotence make that harmless.

A timer moves the clock: customers whose wake-up day has come get a tick
(aging, broken promises, late labels), under the same lock as batches.

Nothing reads the table while a rebalance restores it. faust replays a
changelog partition into the table record by record, so during recovery a
customer's value may be an older version than the last one written; a tick
that read it then would cache the old state and the events after recovery
would be applied to it (lost invoices, payments). faust sets
``recovery.completed`` once and never clears it, so the worker keeps its own
flag: cleared when partitions are revoked (under the batch lock, so a batch or
tick still running finishes first), set by the table's recovery callback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Iterable, Mapping

import faust
from aiokafka.partitioner import murmur2
from faust.stores import rocksdb as faust_rocksdb  # the module imports without rocksdict; the store needs it
from faust.types import TP
from mode.utils.futures import notify

from pipeline.config import Settings
from streams import transport
from streams.processor import BatchProcessor, BatchResult, Record, StateCache
from streams.observability import WorkerMetrics
from streams.runtime import LongLivedHeap, Prepared, WorkerRuntime

log = logging.getLogger("creditwatch.worker")

TABLE_NAME = "customers"
#: Records between two yields to the event loop while the wake-up schedule is rebuilt.
WAKE_REBUILD_STEP = 20_000


#: Batches being committed at once: one waiting for the broker's confirmations while the next is stored.
COMMITS_IN_FLIGHT = 2


@dataclass(eq=False)
class Commit:
    """A batch being committed (streams.app): set ``stored`` once the store has it; ``task`` ends acknowledged."""

    before: Commit | None = None
    stored: asyncio.Event = field(default_factory=asyncio.Event)
    task: Any = None
    ticket: int | None = None  # its place in the order of stores (streams.store_writer), taken in batch order


def stop_now(reason: str) -> None:
    """Crash-only: log the exception being handled and end the process at once, acknowledging nothing.

    ``os._exit``, not an exception: faust would acknowledge the batch on the way out.
    """
    log.critical(reason, exc_info=True)
    logging.shutdown()
    os._exit(70)


def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.consumer_group}-{TABLE_NAME}-changelog"


def checkpoint_topic_name(settings: Settings) -> str:
    return f"{settings.consumer_group}-models"


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Kafka default partitioner (murmur2) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class CommitThenAckStream(faust.Stream):
    """A stream whose batches the agent acknowledges itself, once they are committed.

    faust's ``take_events`` acknowledges a batch as soon as the agent asks for
    the next one. The agent works on batch *n + 1* while batch *n* is being
    stored and its changelog records confirmed, so here ``take_events``'s
    acknowledgement does nothing and the agent calls ``acknowledge`` for each
    event of a batch after its commit: faust never commits an offset past an
    alert that is not stored or a record the broker has not confirmed.
    """

    async def ack(self, event: Any) -> bool:
        return False  # see acknowledge

    async def acknowledge(self, event: Any) -> bool:
        return await super().ack(event)

    def take_batches(self, max_: int, within: float, backlog_within: float) -> AsyncIterator[list[Any]]:
        """Batches of at most ``max_`` events, like faust's ``take_events``, that keep filling while a backlog waits.

        faust closes a batch ``within`` seconds after it starts waiting, however many events wait in the
        stream's channel. Behind a backlog (after a restart, a rebalance or a burst) the channel stays full
        while each window drains only part of it, so batches stay small and every batch's fixed costs (a
        store transaction, the changelog sends, a wake-up schedule pass) are paid again. Here, when the
        window closes while events still wait in the channel, the batch keeps filling until it is full,
        the channel runs dry or ``backlog_within`` has passed since it started; with no backlog a batch
        closes after ``within`` exactly as faust's does, so live latency is unchanged. The events are not
        acknowledged here: the agent acknowledges each batch once it is committed (``acknowledge``).
        """
        batches = self._take_batches(max_, within, backlog_within)
        self._active_agens.add(batches)  # as faust's take_events: the stream closes it when it stops
        return batches

    async def _take_batches(self, max_: int, within: float, backlog_within: float) -> AsyncIterator[list[Any]]:
        buffer: list[Any] = []
        buffer_full = asyncio.Event()
        buffer_consumed = asyncio.Event()
        buffer_consuming: asyncio.Future | None = None
        channel_it = aiter(self.channel)
        waiting = channel_it.queue.qsize
        loop = asyncio.get_running_loop()

        async def add_to_buffer(value: Any) -> Any:
            nonlocal buffer_consuming
            try:
                if buffer_consuming is not None:
                    try:
                        await buffer_consuming
                    finally:
                        buffer_consuming = None
                event = self.current_event
                if event is None:
                    raise RuntimeError("take buffer found current_event is None")
                buffer.append(event)
                if len(buffer) >= max_:
                    buffer_full.set()
                    buffer_consumed.clear()
                    await self.wait(buffer_consumed)  # never more than max_ in a batch
            except asyncio.CancelledError:  # pragma: no cover
                raise
            except Exception as exc:  # pragma: no cover - faust's own handling of a broken buffer
                self.log.exception("Error adding to take buffer: %r", exc)
                await self.crash(exc)
            return value

        enable_acks = self.enable_acks
        self.enable_acks = False
        self.add_processor(add_to_buffer)
        self._enable_passive(channel_it)
        try:
            while not self.should_stop:
                started = loop.time()
                await self.wait_for_stopped(buffer_full, timeout=within)
                while buffer and not buffer_full.is_set() and waiting() and not self.should_stop:
                    left = started + backlog_within - loop.time()
                    if left <= 0:
                        break
                    await self.wait_for_stopped(buffer_full, timeout=min(within, left))
                if buffer:
                    buffer_consuming = loop.create_future()
                    try:
                        yield list(buffer)
                    finally:
                        buffer.clear()
                        notify(buffer_consuming)
                        buffer_full.clear()
                        buffer_consumed.set()
        finally:
            self.enable_acks = enable_acks
            self._processors.remove(add_to_buffer)


class CustomerTable(faust.Table):
    """Byte-valued table whose writes go to the partition of the source event.

    faust picks the changelog partition from the *current event*, which does not
    exist inside a ``take_events`` batch; the agent tells the table the source
    partition of each key it writes instead, and writes a batch's records
    through ``write_through``, which returns the futures of their changelog
    sends so the agent can wait for the broker's acknowledgement.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.source_partition: dict[bytes, int] = {}

    def partition_for_key(self, key: Any) -> int:
        partition = self.source_partition.get(key)
        return partition if partition is not None else key_partition(key, self.partitions or 1)

    async def write_through(self, values: Mapping[bytes, bytes]) -> list[Awaitable[Any]]:
        """Set each key, and hand its changelog record straight to the producer; the futures of the sends.

        ``table[key] = value`` queues the changelog record in faust's producer
        buffer, which one task drains record by record, and faust's conductor
        holds every incoming message while that buffer holds more than 100
        records (``wait_until_ebb``, a timed wait per record). A batch writes
        one record per customer it touched, often hundreds: the stream stalled
        behind its own writes, and the records went out over several produce
        requests. Here they go into the Kafka client's batches in one pass.
        Same records, partitions and order as ``table[key] = value``.
        """
        producer = self.app.producer
        topic = self.changelog_topic.get_topic_name()
        store = self.data
        on_set = self._sensor_on_set
        sent = []
        for key, value in values.items():
            sent.append(await producer.send(topic, key, value, self.partition_for_key(key), None, None))
            store[key] = value
            on_set(self, key, value)
        return sent

    def persisted(self, confirmed: Iterable[Any]) -> None:
        """Record the changelog offsets the broker confirmed (faust's ``_on_changelog_sent``, per partition once):
        a RocksDB store reads the last of them at start-up to know what it already holds."""
        last: dict[int, int] = {}
        for metadata in confirmed:
            if metadata is not None and metadata.offset > last.get(metadata.partition, -1):
                last[metadata.partition] = metadata.offset
        topic = self.changelog_topic.get_topic_name()
        for partition, offset in last.items():
            self.data.set_persisted_offset(TP(topic, partition), offset)

    def _new_store_by_url(self, url: Any) -> Any:
        if not str(url).startswith("rocksdb:"):
            return super()._new_store_by_url(url)
        return SourcePartitionRocksStore(
            url, self.app, self, table_name=self.name, key_type=self.key_type, key_serializer=self.key_serializer,
            value_serializer=self.value_serializer, value_type=self.value_type, loop=self.loop, options=self.options,
        )


class SourcePartitionRocksStore(faust_rocksdb.Store):
    """faust's RocksDB store (``CREDITWATCH_STORE=rocksdb://``) without the "current event".

    faust's store writes a key into the database of the current event's
    partition and reads it from there, but a ``take_events`` batch has no
    current event (writes fail) or the batch's last one (reads would miss
    customers of other partitions). Writes go to the partition the table
    names for the key (its source event's). A read tries that partition's
    database first, which holds the key whenever producers key events by
    customer with Kafka's default partitioner; otherwise it looks the key up
    in the partition databases (an index, then the bloom filters). With a
    million customers the index rarely holds a key, and the search asked
    every database in turn: several reads per customer not in memory.
    """

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = self.table.partition_for_key(key)
        self._db_for_partition(partition).put(key, value)
        self._key_index[key] = partition

    def _get(self, key: bytes) -> bytes | None:
        partition = self.table.partition_for_key(key)
        db = self._dbs.get(partition)
        if db is not None:
            value = db.get(key)
            if value is not None:
                self._key_index[key] = partition
                return value
        found = self._get_bucket_for_key(key)
        return None if found is None else found.value

    def owned_items(self, partitions: set[int]) -> Any:
        """(key, value) of every record in the databases of these partitions, straight from RocksDB."""
        for partition, db in list(self._dbs.items()):
            if partition in partitions:
                yield from self._visible_items(db)


def owned_items(table: faust.Table, partitions: set[int], count: int) -> Any:
    """(key, value) of the table's records whose key belongs to one of ``partitions`` (of ``count``)."""
    store = table.data
    if isinstance(store, SourcePartitionRocksStore):
        return store.owned_items(partitions)
    return ((key, value) for key, value in table.items() if key_partition(key, count) in partitions)


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """faust's RocksDB options for the customers Table (per partition database); {} keeps faust's defaults."""
    options: dict[str, int] = {}
    if settings.rocksdb_write_buffer_mb:
        options.update(write_buffer_size=settings.rocksdb_write_buffer_mb << 20, max_write_buffer_number=2)
    if settings.rocksdb_block_cache_mb:
        options.update(block_cache_size=settings.rocksdb_block_cache_mb << 20)
    return options


def build_app(settings: Settings, runtime: WorkerRuntime, tick_interval_s: float = 30.0,
              checkpoint_interval_s: float = 60.0, metrics: WorkerMetrics | None = None) -> faust.App:
    metrics = metrics or WorkerMetrics()
    transport.FETCH_MAX_WAIT_MS = settings.fetch_max_wait_ms
    session = settings.session_timeout_s
    app = faust.App(
        settings.consumer_group,
        broker=f"{transport.SCHEME}://{settings.bootstrap_servers}",
        store=settings.store,
        autodiscover=False,
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        table_standby_replicas=0,
        broker_session_timeout=session,
        broker_rebalance_timeout=session,
        broker_heartbeat_interval=max(session / 3, 0.3),
        broker_request_timeout=max(30.0, session + 10),
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.002,
        producer_acks=-1,
        stream_recovery_delay=0.0,
        Stream=CommitThenAckStream,
    )
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    source = app.topic(*settings.input_topics, partitions=settings.partitions, **raw)
    deadletter = app.topic(settings.topic("deadletter"), partitions=settings.partitions, **raw)
    checkpoints = app.topic(checkpoint_topic_name(settings), partitions=1, **raw)
    table = app.tables.add(
        CustomerTable(
            app,
            name=TABLE_NAME,
            beacon=app.tables.beacon,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            help="Each customer's record: ledger facts, alert episodes, model state (pipeline.engine).",
            options=rocksdb_options(settings) if settings.store.startswith("rocksdb") else None,
        )
    )
    #: Records of the batch being committed, not yet in the table: the next batch must read these, not the table's.
    unwritten: dict[str, bytes] = {}
    cache = StateCache(lambda customer_id: unwritten.get(customer_id) or table.get(customer_id.encode()),
                       capacity=settings.state_cache)
    heap = LongLivedHeap(settings.gc_full_interval_s)
    #: Batches being committed, oldest first: each is stored, then its records are written to the table and
    #: confirmed, then it is acknowledged. Stores run in batch order, and so do writes; a batch's store may run
    #: while the batch before it waits for its confirmations.
    committing: deque[Commit] = deque()

    async def drain() -> None:
        """Wait until every batch being committed is; whatever runs next sees them stored and in the table."""
        while committing:
            await committing.popleft().task
    topic_kinds = {settings.topic(kind): kind for kind in ("invoices", "payments", "customers")}
    processor = BatchProcessor(cache, runtime.engine, topic_kinds, runtime.clock)
    wake_stale = asyncio.Event()
    #: The table holds the latest state of every owned partition: not from a revoke to the end of its recovery.
    table_restored = asyncio.Event()

    @app.on_partitions_revoked.connect
    async def forget_partition_state(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        async with runtime.lock:
            await drain()
            table_restored.clear()
            # Partitions may come back after another worker changed them.
            cache.clear()
            runtime.wake.clear()
        wake_stale.set()

    @table.on_recover
    async def table_is_restored() -> None:
        cache.clear()  # nothing is read during recovery, and this keeps it that way if something ever is
        table_restored.set()
        metrics.restores.inc()

    @app.on_partitions_assigned.connect
    async def mark_wake_schedule_stale(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        wake_stale.set()

    async def write(values: dict[str, bytes], partitions: dict[str, int], letters: list) -> None:
        """The records into the Table and the dead letters; returns when the broker has confirmed them."""
        keyed = {}
        for customer_id, value in values.items():
            key = customer_id.encode()
            partition = partitions.get(customer_id)
            if partition is not None:
                table.source_partition[key] = partition
            keyed[key] = value
        changelog = await table.write_through(keyed)
        table.source_partition.clear()
        confirmations = []
        for letter in letters:
            log.warning("dead-lettered: %s", letter.reason, extra={
                "topic": letter.record.topic, "partition": letter.record.partition, "offset": letter.record.offset})
            confirmations.append(await deadletter.send(key=letter.record.key, value=letter.record.value or b"",
                                                       headers=letter.headers()))
        if changelog:
            table.persisted(await asyncio.gather(*changelog))
        if confirmations:
            await asyncio.gather(*confirmations)

    processed_to: dict[tuple[str, int], int] = {}

    def log_alerts(updates: list[Any]) -> None:
        for update in updates:
            alert = update.alert
            context = {"customer_id": alert["customer_id"], "alert_id": update.alert_id}
            if alert.get("event_ids"):
                context["event_id"] = alert["event_ids"][-1]  # the latest evidence
            log.info("alert %s %s", update.change, alert["title"], extra=context)

    async def handle_batch(stream: CommitThenAckStream, events: list[Any]) -> None:
        """Run a batch through the engine, then commit it in the background while the next batch is read.

        Everything the commit needs is taken from the records now (store
        payload, table bytes), because the next batch changes them. At most
        ``COMMITS_IN_FLIGHT`` batches are being committed; their stores run
        in batch order, and so do their table writes and acknowledgements.
        """
        records = [Record(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
                   for e in events]
        async with runtime.lock:
            if not table_restored.is_set():
                # faust pauses the stream during recovery; a batch now would read half-restored states.
                raise RuntimeError("a batch arrived while the table was being restored")
            started = time.time()
            now = runtime.clock.now()
            result: BatchResult = processor.process(records, now)
            runtime.schedule(result.states.values(), now.date())
            prepared = runtime.prepare(result.updates, result.states, now)
            unwritten.update(prepared.values)
            heap.after_batch()
            while committing and committing[0].task.done():
                committing.popleft()
            while len(committing) >= COMMITS_IN_FLIGHT:
                await committing.popleft().task
            commit = Commit(before=committing[-1] if committing else None,
                            ticket=runtime.writer.ticket() if runtime.stores_in_turn else None)
            commit.task = asyncio.create_task(commit_batch(stream, events, records, result, prepared, started,
                                                           commit))
            committing.append(commit)

    async def commit_batch(stream: CommitThenAckStream, events: list[Any], records: list[Record],
                           result: BatchResult, prepared: Prepared, started: float, commit: Commit) -> None:
        try:
            before = commit.before
            commit.before = None  # no chain of finished commits kept alive
            if before is not None and not runtime.stores_in_turn:
                await before.stored.wait()
            storing = time.perf_counter()
            # With the child store writer the batch goes now: the child stores it in its turn, right after the
            # one before (see streams.store_writer), instead of after the event loop saw that one stored.
            await runtime.store_prepared(prepared, result.applied, commit.ticket,
                                         before.stored if before is not None else None)
            metrics.store_seconds.observe(time.perf_counter() - storing)
            commit.stored.set()
            if before is not None:
                await before.task  # its records go to the table first, and its offsets are acknowledged first
            await write(prepared.values, result.partitions, result.dead_letters)
            for customer_id, value in prepared.values.items():
                if unwritten.get(customer_id) is value:
                    del unwritten[customer_id]
            log_alerts(result.updates)
            metrics.observe_batch(result, records, started, time.time(), [e.message.timestamp for e in events])
            for record in records:
                processed_to[(record.topic, record.partition)] = record.offset + 1
            for event in events:
                await stream.acknowledge(event)
        except Exception:  # noqa: BLE001 - crash-only: never acknowledge a batch that was not committed
            stop_now("batch failed; stopping without committing it")

    @app.agent(source, concurrency=1)
    async def process(stream: faust.StreamT) -> None:
        if not isinstance(stream, CommitThenAckStream):
            raise TypeError("the agent acknowledges batches itself; its stream must be a CommitThenAckStream")
        batches = stream.take_batches(settings.batch_max, settings.batch_wait_s, settings.batch_backlog_wait_s)
        async for events in batches:
            try:
                await handle_batch(stream, events)
            except Exception:  # noqa: BLE001 - crash-only: never let faust ack a failed batch
                stop_now("batch failed; stopping without committing it")

    def assigned_partitions() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic in settings.input_topics}

    async def rebuild_wake_schedule() -> None:
        """Every owned customer's next wake-up day, from the table (mostly from the records' wake-up headers).

        Runs under the batch lock; lets the event loop run (heartbeats) every
        ``WAKE_REBUILD_STEP`` records, nothing else can touch the table meanwhile.
        """
        started = time.perf_counter()
        owned = assigned_partitions()
        today = runtime.clock.now().date()
        runtime.wake.clear()
        due = {}
        count = decoded = 0
        for key, value in owned_items(table, owned, settings.partitions):
            day, opened = runtime.wake_from_table(value, today)
            if day is not None:
                due[key.decode()] = day
            count += 1
            decoded += opened
            if count % WAKE_REBUILD_STEP == 0:
                await asyncio.sleep(0)
        runtime.wake.replace(due)
        seconds = time.perf_counter() - started
        metrics.observe_wake_rebuild(count, decoded, seconds, len(runtime.wake))
        log.info("wake schedule rebuilt: %s customers (%s decoded) in %.1f s", f"{count:,}", f"{decoded:,}", seconds)

    @app.timer(tick_interval_s)
    async def move_the_clock() -> None:
        try:
            async with runtime.lock:
                if not table_restored.is_set():
                    metrics.ticks_deferred.inc()
                    return
                # A tick may touch a customer of the batch being committed: that batch's record goes first.
                await drain()
                if wake_stale.is_set():
                    wake_stale.clear()
                    await rebuild_wake_schedule()
                now = runtime.clock.now()
                touched, updates = runtime.tick(cache.get, now)
                metrics.ticks.inc(len(touched))
                if touched:
                    stored = await runtime.persist(updates, touched, now)
                    await write(stored.values, {}, [])
                    log_alerts(updates)
                    metrics.observe_alerts(updates)
        except Exception:  # noqa: BLE001 - same crash-only rule as batches
            stop_now("clock tick failed; stopping")

    @app.timer(settings.threshold_poll_s)
    async def follow_threshold_changes() -> None:
        from pipeline.tuning import current

        try:
            version = await asyncio.to_thread(current, runtime.store)
        except Exception:  # noqa: BLE001 - an outage is reported by the batch path; try again next time
            return
        if version.number is not None and version.number != runtime.threshold_version:
            async with runtime.lock:
                runtime.reconfigure(version.thresholds, version.number)
                processor.engine = runtime.engine
            log.warning("thresholds version %s in force", version.number)

    @app.timer(settings.threshold_poll_s)
    async def follow_verdicts() -> None:
        if not app.tables.recovery.completed.is_set():
            return
        try:
            learned = await runtime.follow_verdicts()
        except Exception:  # noqa: BLE001 - an outage is reported by the batch path; try again next time
            return
        if learned:
            log.info("learned %s reviewer verdicts", learned,
                     extra={"verdicts_learned": runtime.feedback.learned})

    async def save_checkpoint() -> None:
        snapshot = getattr(runtime.models, "snapshot", None)
        if snapshot is not None:
            await (await checkpoints.send(key=b"models", value=snapshot()))
        # The reviewer-feedback model, with its watermark in the store's verdicts (streams.worker restores both).
        await (await checkpoints.send(key=b"feedback", value=runtime.feedback.snapshot()))

    @app.timer(checkpoint_interval_s)
    async def checkpoint_models() -> None:
        if app.tables.recovery.completed.is_set():
            async with runtime.lock:
                await drain()  # the models' state then matches what is stored and acknowledged
                await save_checkpoint()

    delivery = None
    if settings.delivery == "process":
        from streams.delivery import DeliveryProcess

        # The outbox relay in a child process (streams.delivery): it does not compete for this process's GIL.
        delivery = DeliveryProcess(observe=metrics.observe_deliveries)

    @app.task
    async def deliver_alerts(app: faust.App) -> None:
        if delivery is not None:
            await delivery.supervise(runtime.stopping)
            return
        from sinks.outbox import OutboxDeliverer

        from pipeline.clock import SystemClock

        # Retries wait in wall time, even when the detection clock is accelerated (demo).
        deliverer = OutboxDeliverer(runtime.store, runtime.sinks, SystemClock(), observe=metrics.observe_deliveries)
        runtime.deliverer = deliverer
        await deliverer.run_forever(runtime.stopping, poll_interval=0.5)

    lag_series: set[tuple[str, str]] = set()

    @app.timer(5.0)
    async def refresh_gauges() -> None:
        owned = set()
        for tp in app.consumer.assignment():
            if tp.topic in settings.input_topics:
                owned.add((tp.topic, str(tp.partition)))
                highwater = app.consumer.highwater(tp)
                if highwater is not None:
                    done = processed_to.get((tp.topic, tp.partition), 0)
                    metrics.lag.labels(tp.topic, str(tp.partition)).set(max(highwater - done, 0))
                    lag_series.add((tp.topic, str(tp.partition)))
        # A partition that moved to another worker is no longer this worker's lag.
        for labels in lag_series - owned:
            metrics.lag.remove(*labels)
        lag_series.intersection_update(owned)
        progressive_auc = getattr(runtime.models, "progressive_auc", None)
        if progressive_auc is not None:
            auc = progressive_auc()
            if isinstance(auc, (int, float)):
                metrics.model_auc.set(auc)
        try:
            counts = await asyncio.to_thread(runtime.store.delivery_counts)
        except Exception:  # noqa: BLE001 - the store's outage is reported by the batch path
            return
        for status, count in counts.items():
            metrics.deliveries.labels(status).set(count)

    @app.task
    async def watch_the_event_loop(app: faust.App) -> None:
        """``creditwatch_event_loop_lag_seconds``: a 50 ms timer's lateness, the longest the loop was held."""
        loop = asyncio.get_running_loop()
        interval = 0.05
        while not runtime.stopping.is_set():
            before = loop.time()
            await asyncio.sleep(interval)
            metrics.loop_lag.observe(max(loop.time() - before - interval, 0.0))

    @app.task
    async def announce_ready(app: faust.App) -> None:
        if runtime.writer is not None:
            await runtime.writer.start()
        await app.tables.recovery.completed.wait()
        metrics.ready = True
        print(f"creditwatch worker ready (group {settings.consumer_group}, {settings.partitions} partitions)",
              file=sys.stderr, flush=True)

    app.creditwatch_metrics = metrics  # type: ignore[attr-defined]
    app.creditwatch_table = table  # type: ignore[attr-defined]
    app.creditwatch_cache = cache  # type: ignore[attr-defined]
    app.creditwatch_save_checkpoint = save_checkpoint  # type: ignore[attr-defined]
    app.creditwatch_drain = drain  # type: ignore[attr-defined]
    #: The delivery child process (CREDITWATCH_DELIVERY=process), None when the outbox runs inline.
    app.creditwatch_delivery = delivery  # type: ignore[attr-defined]
    return app
