"""streams.transport: where the consumer resumes reading after faust's seek to the committed offsets."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.admin import ensure_topics
from streams.transport import seek_uncommitted_to_start

pytestmark = pytest.mark.broker

RECORDS_PER_PARTITION = 5


async def _read_everything_commit_one_then_seek(bootstrap: str, topic: str, fix: bool,
                                                skipped: set[int]) -> tuple[dict[int, Any], dict[int, int]]:
    """Three partitions of 5 records each, all read; offset 3 committed for partition 0 only; then the seek.

    Returns the committed offsets and each partition's position after the seek.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition in range(3):
            for n in range(RECORDS_PER_PARTITION):
                await producer.send(topic, f"p{partition}-{n}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, partition) for partition in range(3)]
        consumer.assign(tps)
        read = 0
        deadline = time.monotonic() + 10
        while read < 3 * RECORDS_PER_PARTITION:
            assert time.monotonic() < deadline, f"read {read} records within 10 s"
            read += sum(len(records) for records in (await consumer.getmany(timeout_ms=100)).values())
        await consumer.commit({tps[0]: 3})
        committed = await consumer.seek_to_committed()
        if fix:
            moved = await seek_uncommitted_to_start(consumer, committed, skip=lambda tp: tp.partition in skipped)
            assert sorted(tp.partition for tp in moved) == sorted({1, 2} - skipped)
        positions = {tp.partition: await consumer.position(tp) for tp in tps}
        return {tp.partition: offset for tp, offset in committed.items()}, positions
    finally:
        await consumer.stop()


def test_aiokafka_seek_to_committed_leaves_a_partition_without_a_commit_where_it_was_read_to(broker, unique_prefix):
    """Pins aiokafka's behaviour that ``seek_uncommitted_to_start`` corrects.

    In the worker, records faust fetched while it seeks are dropped; on a
    partition without a commit they were then skipped for good (a worker
    restarted right after a SIGKILL, before its first commit, processed
    nothing; ``tests/test_worker.py``, 3 of about 120 runs).
    """
    topic = unique_prefix + "seek"
    ensure_topics(broker.bootstrap, {topic: 3})
    committed, positions = asyncio.run(_read_everything_commit_one_then_seek(broker.bootstrap, topic, fix=False,
                                                                             skipped=set()))
    assert committed == {0: 3, 1: None, 2: None}
    assert positions == {0: 3, 1: RECORDS_PER_PARTITION, 2: RECORDS_PER_PARTITION}


def test_a_stream_partition_without_a_committed_offset_is_read_again_from_its_start_after_the_seek(
    broker, unique_prefix
):
    topic = unique_prefix + "seek"
    ensure_topics(broker.bootstrap, {topic: 3})
    # Partition 2 stands for a changelog partition: table recovery sets its position, the seek leaves it alone.
    committed, positions = asyncio.run(_read_everything_commit_one_then_seek(broker.bootstrap, topic, fix=True,
                                                                             skipped={2}))
    assert committed == {0: 3, 1: None, 2: None}
    assert positions == {0: 3, 1: 0, 2: RECORDS_PER_PARTITION}
