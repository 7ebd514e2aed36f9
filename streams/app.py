"""The faust app: three co-partitioned input topics → one agent → one Table.

One agent reads ``credit.invoices``, ``credit.payments`` and
``credit.customers`` (all keyed by customer_id, same partition count), so the
worker that owns partition *p* owns every event of the customers hashed to
*p* and their state in partition *p* of the changelog. No repartition.

The agent works in batches (``take_events``): each customer touched in a
batch is written to the Table once, and the batch's changelog records and
dead letters are acknowledged by the broker before the batch's source offsets
are acknowledged to faust, which commits them later. So a committed offset
never runs ahead of the state that event produced. A failure inside a batch
ends the process without acknowledging anything (faust would otherwise ack
the whole batch on the way out); on restart the batch is read again, and the
ledger's idempotence makes that harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Callable

import faust
from aiokafka.partitioner import murmur2

from pipeline.config import Settings
from streams import transport
from streams.processor import BatchProcessor, BatchResult, Record, StateCache, encode_state

log = logging.getLogger("creditwatch.worker")

TABLE_NAME = "customers"


def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.consumer_group}-{TABLE_NAME}-changelog"


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Kafka default partitioner (murmur2) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class CustomerTable(faust.Table):
    """Byte-valued table whose writes go to the partition of the source event.

    faust picks the changelog partition from the *current event*, which does not
    exist inside a ``take_events`` batch; the agent tells the table the source
    partition of each key it writes instead. It also keeps the futures of the
    changelog writes so the agent can wait for the broker's acknowledgement.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.source_partition: dict[bytes, int] = {}
        self.unconfirmed: list[asyncio.Future] = []

    def partition_for_key(self, key: Any) -> int:
        partition = self.source_partition.get(key)
        return partition if partition is not None else key_partition(key, self.partitions or 1)

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        future = super().send_changelog(*args, **kwargs)
        self.unconfirmed.append(future)
        return future


BatchHook = Callable[[BatchResult], Any]


def build_app(settings: Settings, on_batch: BatchHook | None = None) -> faust.App:
    transport.FETCH_MAX_WAIT_MS = settings.fetch_max_wait_ms
    session = settings.session_timeout_s
    app = faust.App(
        settings.consumer_group,
        broker=f"{transport.SCHEME}://{settings.bootstrap_servers}",
        store="memory://",
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
    )
    source = app.topic(
        *settings.input_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    deadletter = app.topic(settings.topic("deadletter"), key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    table = app.tables.add(
        CustomerTable(
            app,
            name=TABLE_NAME,
            beacon=app.tables.beacon,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            help="Each customer's ledger state, as JSON facts (pipeline.ledger).",
        )
    )
    cache = StateCache(lambda customer_id: table.get(customer_id.encode()))
    topic_kinds = {settings.topic(kind): kind for kind in ("invoices", "payments", "customers")}
    processor = BatchProcessor(cache, settings.ledger, topic_kinds)

    @app.on_partitions_revoked.connect
    async def forget_cached_states(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        # Partitions may come back after another worker changed them.
        cache.clear()

    @app.agent(source, concurrency=1)
    async def process(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_wait_s):
            try:
                await _handle_batch(events, processor, table, deadletter, on_batch)
            except Exception:  # noqa: BLE001 - crash-only: never let faust ack a failed batch
                log.critical("batch failed; stopping without committing it", exc_info=True)
                logging.shutdown()
                os._exit(70)

    @app.task
    async def announce_ready(app: faust.App) -> None:
        await app.tables.recovery.completed.wait()
        print(f"creditwatch worker ready (group {settings.consumer_group}, {settings.partitions} partitions)",
              file=sys.stderr, flush=True)

    app.creditwatch_table = table  # type: ignore[attr-defined]
    app.creditwatch_cache = cache  # type: ignore[attr-defined]
    return app


async def _handle_batch(
    events: list[Any],
    processor: BatchProcessor,
    table: CustomerTable,
    deadletter: Any,
    on_batch: BatchHook | None,
) -> None:
    records = [
        Record(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value) for e in events
    ]
    result = processor.process(records)
    for customer_id, state in result.states.items():
        key = customer_id.encode()
        table.source_partition[key] = result.partitions[customer_id]
        table[key] = encode_state(state)
    table.source_partition.clear()
    confirmations = table.unconfirmed
    table.unconfirmed = []
    for letter in result.dead_letters:
        log.warning(
            "dead-lettered %s[%d]@%d: %s", letter.record.topic, letter.record.partition, letter.record.offset, letter.reason
        )
        confirmations.append(
            await deadletter.send(
                key=letter.record.key, value=letter.record.value or b"", headers=letter.headers()
            )
        )
    if on_batch is not None:
        outcome = on_batch(result)
        if asyncio.iscoroutine(outcome):
            await outcome
    if confirmations:
        await asyncio.gather(*confirmations)
