"""The embedded Tansu broker, topic administration, and the Tansu quirks we rely on.

Tests marked "pins Tansu" check behaviour of the Tansu broker itself; they are
skipped against an external broker (``CREDITWATCH_TEST_BROKER``).
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaAdminClient

from streams.admin import (
    TopicLayoutError,
    check_copartitioned,
    ensure_topics,
    high_watermarks,
    partition_counts,
)
from streams.broker import BrokerError, EmbeddedBroker, free_port, probe

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[1]


def tansu_only(broker: EmbeddedBroker) -> None:
    if not broker.running:
        pytest.skip("pins Tansu behaviour; the session broker is external (CREDITWATCH_TEST_BROKER)")


def list_topics(bootstrap: str) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return admin.list_topics()
    finally:
        admin.close()


# --- (a) the broker speaks Kafka --------------------------------------------


def test_broker_answers_metadata_and_round_trips_keyed_records(broker, unique_prefix):
    assert broker.url == f"kafka://{broker.host}:{broker.port}"
    assert broker.bootstrap == f"{broker.host}:{broker.port}"
    assert probe(broker.host, broker.port)  # ApiVersions + Metadata answered, cluster id present
    topic = unique_prefix + "roundtrip"
    ensure_topics(broker.bootstrap, {topic: 2})
    sent = [(f"C{i % 3}".encode(), f"event-{i}".encode()) for i in range(20)]

    async def round_trip() -> tuple[set[int], list[tuple[bytes, bytes]]]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            assert await producer.partitions_for(topic) == {0, 1}
            for key, value in sent:
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=20)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in (0, 1)]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            got: list[tuple[bytes, bytes]] = []
            deadline = time.monotonic() + 5
            while len(got) < len(sent) and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=100)
                got.extend((m.key, m.value) for records in batches.values() for m in records)
            return consumer.partitions_for_topic(topic), got
        finally:
            await consumer.stop()

    partitions, got = asyncio.run(round_trip())
    assert partitions == {0, 1}
    assert sorted(got) == sorted(sent)


# --- (b) explicit topics and the co-partitioning check -----------------------


def test_ensure_topics_creates_missing_topics_with_the_requested_partition_counts(broker, unique_prefix):
    eight, three = unique_prefix + "eight", unique_prefix + "three"
    assert sorted(ensure_topics(broker.bootstrap, {eight: 8, three: 3})) == sorted([eight, three])
    assert partition_counts(broker.bootstrap, [eight, three]) == {eight: 8, three: 3}
    # Idempotent: existing topics are left as they are, only the missing one is created.
    one = unique_prefix + "one"
    assert ensure_topics(broker.bootstrap, {eight: 8, three: 3, one: 1}) == [one]
    assert partition_counts(broker.bootstrap, [eight, three, one]) == {eight: 8, three: 3, one: 1}


def test_check_copartitioned_raises_one_line_naming_each_topic_and_its_count(broker, unique_prefix):
    invoices, payments, customers = (unique_prefix + kind for kind in ("invoices", "payments", "customers"))
    ensure_topics(broker.bootstrap, {invoices: 8, payments: 3, customers: 8})
    with pytest.raises(TopicLayoutError) as caught:
        check_copartitioned(broker.bootstrap, [invoices, payments, customers])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("input topics are not co-partitioned: ")
    assert f"{invoices} has 8 partitions, {payments} has 3 partitions, {customers} has 8 partitions" in message


def test_check_copartitioned_reports_a_missing_topic_without_creating_it(broker, unique_prefix):
    present, absent = unique_prefix + "present", unique_prefix + "absent"
    ensure_topics(broker.bootstrap, {present: 4})
    with pytest.raises(TopicLayoutError, match=f"{absent} does not exist"):
        check_copartitioned(broker.bootstrap, [present, absent])
    assert partition_counts(broker.bootstrap, [absent]) == {absent: None}
    assert absent not in list_topics(broker.bootstrap)


def test_check_copartitioned_passes_when_all_counts_are_equal(broker, unique_prefix):
    topics = {unique_prefix + kind: 8 for kind in ("invoices", "payments", "customers")}
    ensure_topics(broker.bootstrap, topics)
    check_copartitioned(broker.bootstrap, list(topics))


def test_tansu_auto_creates_an_unknown_topic_with_4_partitions_when_a_producer_asks_for_it(broker, unique_prefix):
    """Pins Tansu: why ``ensure_topics`` must run before any producer/consumer touches a topic."""
    tansu_only(broker)
    topic = unique_prefix + "autocreated"

    async def ask() -> set[int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            return await producer.partitions_for(topic)
        finally:
            await producer.stop()

    assert asyncio.run(ask()) == {0, 1, 2, 3}
    assert partition_counts(broker.bootstrap, [topic]) == {topic: 4}


# --- (c) the ListOffsets defect ----------------------------------------------


async def _produce_batches(bootstrap: str, topic: str, batch_sizes: list[int]) -> None:
    """Write each size as exactly one record batch to partition 0."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 20)
    await producer.start()
    try:
        n = 0
        for size in batch_sizes:
            batch = producer.create_batch()
            for _ in range(size):
                assert batch.append(key=b"C1", value=b"x" * 20, timestamp=None) is not None
                n += 1
            await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()


async def _list_offsets_latest(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


@pytest.mark.parametrize(
    ("batch_sizes", "tansu_list_offsets_answer"),
    [([900], 1), ([300, 300, 300], 601), ([450, 450], 451), ([1] * 5, 5)],
    ids=["one-batch-of-900", "three-batches-of-300", "two-batches-of-450", "five-single-record-batches"],
)
def test_tansu_list_offsets_latest_is_last_batch_base_offset_plus_one_so_we_read_the_fetch_high_watermark(
    broker, unique_prefix, batch_sizes, tansu_list_offsets_answer
):
    """Pins a Tansu 0.6.0 defect and our workaround.

    ListOffsets(latest) -- ``end_offsets`` in aiokafka and kafka-python --
    answers the base offset of the partition's LAST record batch + 1, not the
    log end: after one batch of 900 records it says 1. The high watermark in
    Fetch responses is right (900), and ``streams.admin.high_watermarks``
    reads that one.

    If this test fails because ListOffsets now equals the record count, Tansu
    has fixed the defect: that failure is on purpose, to tell us the
    workaround (``high_watermarks`` instead of ``end_offsets``) can go.
    """
    tansu_only(broker)
    topic = unique_prefix + "offsets"
    ensure_topics(broker.bootstrap, {topic: 1})
    asyncio.run(_produce_batches(broker.bootstrap, topic, batch_sizes))
    total = sum(batch_sizes)

    assert high_watermarks(broker.bootstrap, topic) == {0: total}
    assert asyncio.run(_list_offsets_latest(broker.bootstrap, topic)) == tansu_list_offsets_answer


def test_high_watermarks_are_zero_for_empty_partitions_and_refuse_unknown_topics(broker, unique_prefix):
    topic = unique_prefix + "empty"
    ensure_topics(broker.bootstrap, {topic: 3})
    assert high_watermarks(broker.bootstrap, topic) == {0: 0, 1: 0, 2: 0}
    absent = unique_prefix + "absent"
    with pytest.raises(TopicLayoutError, match=f"topic {absent} does not exist"):
        high_watermarks(broker.bootstrap, absent)
    assert absent not in list_topics(broker.bootstrap)


# --- start-up errors ----------------------------------------------------------


def test_embedded_broker_refuses_a_taken_port_with_a_one_line_error():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerError) as caught:
            EmbeddedBroker(port=port).start(timeout=5)
    assert str(caught.value) == f"cannot start the embedded broker: port {port} on 127.0.0.1 is already in use"


def test_embedded_broker_reports_a_missing_binary_with_a_one_line_error(tmp_path):
    missing = tmp_path / "tansu"
    with pytest.raises(BrokerError, match="cannot find the Tansu broker binary") as caught:
        EmbeddedBroker(port=free_port(), binary=str(missing)).start()
    assert "\n" not in str(caught.value)


# --- (d) `creditwatch broker` -------------------------------------------------


def _spawn_run_broker(port: int) -> subprocess.Popen[str]:
    code = f"import sys; from streams.broker import run_broker; sys.exit(run_broker({port}))"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _readline(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def test_run_broker_prints_the_ready_line_serves_kafka_and_exits_0_on_sigterm():
    port = free_port()
    proc = _spawn_run_broker(port)
    try:
        line = _readline(proc.stdout, timeout=15)
        assert line == f"broker ready on kafka://127.0.0.1:{port}\n", proc.stderr.read() if not line else line
        assert probe("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout.read() == ""
    with pytest.raises(OSError):  # the broker went away with it
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_run_broker_exits_1_with_one_line_error_when_the_port_is_taken():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proc = _spawn_run_broker(port)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert out == ""
    assert err == f"creditwatch broker: cannot start the embedded broker: port {port} on 127.0.0.1 is already in use\n"
