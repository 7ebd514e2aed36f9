"""Read customer states straight from the Table's changelog topic.

The changelog *is* the worker's state: the last record of a key is the
customer's state as of the last batch the worker confirmed. Reading it needs
no running worker. End offsets come from Fetch high watermarks (see
``streams.transport`` for why not ListOffsets).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Iterable

from pipeline.config import Settings
from pipeline.ledger import CustomerState

if TYPE_CHECKING:
    from pipeline.engine import CustomerRecord


class StateUnavailable(Exception):
    """The changelog cannot be read; one line."""


async def _read_changelog(settings: Settings, partitions: Iterable[int] | None, wanted: bytes | None) -> dict[bytes, bytes]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    from streams.app import changelog_topic_name
    from streams.transport import fetch_high_watermarks

    topic = changelog_topic_name(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms or 20,
        request_timeout_ms=15_000,
    )
    try:
        await consumer.start()
    except KafkaError as problem:
        raise StateUnavailable(f"cannot reach the broker at {settings.bootstrap_servers}: {problem}") from None
    try:
        # Asks metadata without subscribing, so an unknown topic is not auto-created.
        available = (await consumer.topics()) and consumer.partitions_for_topic(topic)
        if not available:
            raise StateUnavailable(f"no state yet: changelog topic {topic} does not exist (has a worker run?)")
        chosen = sorted(available if partitions is None else set(partitions) & available)
        tps = [TopicPartition(topic, p) for p in chosen]
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await fetch_high_watermarks(consumer._client, tps, starts)
        latest: dict[bytes, bytes] = {}
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.key is None or (wanted is not None and message.key != wanted):
                        continue
                    if message.value is None:
                        latest.pop(message.key, None)
                    else:
                        latest[message.key] = message.value
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return latest
    finally:
        await consumer.stop()


def read_all_records(settings: Settings) -> dict[str, "CustomerRecord"]:
    from pipeline.engine import decode_record

    raw = asyncio.run(_read_changelog(settings, None, None))
    return {key.decode(): decode_record(value) for key, value in raw.items()}


def read_all_states(settings: Settings) -> dict[str, CustomerState]:
    """Each customer's ledger state as the worker last confirmed it."""
    return {customer_id: record.ledger for customer_id, record in read_all_records(settings).items()}


def read_customer_state(settings: Settings, customer_id: str) -> CustomerState | None:
    from streams.app import key_partition
    from streams.processor import decode_state

    key = customer_id.encode()
    found = asyncio.run(_read_changelog(settings, [key_partition(key, settings.partitions)], key))
    if key not in found:
        # Written by events that were not keyed with the default partitioner: look everywhere.
        found = asyncio.run(_read_changelog(settings, None, key))
    return decode_state(found[key]).ledger if key in found else None
