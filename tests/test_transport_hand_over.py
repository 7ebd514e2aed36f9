"""streams.transport (5): fetched records reach the streams with one guard per chunk, as faust hands them over.

The consumer here is the worker's real one (``streams.transport.Consumer`` of a
faust app); only what the broker would give it is scripted: its ``getmany``
yields prepared records, as faust's does after its wait for records (which is
where a rebalance can finish and change the consumer generation).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import faust
from faust.types import TP, Message

import streams.transport as transport

TOPIC = "c.invoices"


def message(partition: int, offset: int) -> Message:
    return Message(TOPIC, partition, offset, timestamp=0.0, timestamp_type=0, headers=[], key=b"k",
                   value=b"{}", checksum=None)


def consumer_of(tmp_path) -> Any:
    """The consumer of a new app, made on the running event loop (faust's services take the loop they are made on)."""
    app = faust.App(f"hand-over-{tmp_path.name}", broker=f"{transport.SCHEME}://127.0.0.1:1", web_enabled=False,
                    autodiscover=False, datadir=str(tmp_path / "faust"), loop=asyncio.get_running_loop())
    consumer = app.consumer
    assert isinstance(consumer, transport.Consumer)
    return consumer


async def drain(tmp_path, chunks: list[list[Message]], callback: Any, *, new_generation: bool = False,
                until: Any = None, read_offset: int | None = None) -> dict[str, Any]:
    """Run a new consumer's drain loop over ``chunks`` (one per getmany), then stop it; the consumer and its guards."""
    consumer = consumer_of(tmp_path)
    if read_offset is not None:
        consumer._read_offset[TP(TOPIC, 0)] = read_offset
    fetcher = types.SimpleNamespace(_stopped=asyncio.Event())
    script = list(chunks)
    guards = []

    async def getmany(timeout: float):
        if not script:
            fetcher._stopped.set()
            return
        chunk = script.pop(0)
        if new_generation:  # a rebalance finished while getmany waited for these records
            consumer.app.consumer_generation_id += 1
        for record in chunk:
            yield TP(record.topic, record.partition), record

    real_wait_first = consumer.wait_first

    async def wait_first(*coros: Any, **kwargs: Any) -> Any:
        guards.append(len(coros))
        return await real_wait_first(*coros, **kwargs)

    consumer.getmany = getmany
    consumer.callback = callback
    consumer.wait_first = wait_first
    loop = asyncio.create_task(consumer._drain_messages(fetcher))
    if until is not None:
        await until(consumer)
        fetcher._stopped.set()
        script.clear()
    await asyncio.wait_for(loop, timeout=10)
    return {"guards": guards, "consumer": consumer}


def test_fetched_records_reach_the_streams_in_order_with_one_guard_per_fetched_chunk(tmp_path):
    chunks = [[message(p, o) for o in range(150) for p in (0, 1)], [message(0, o) for o in range(150, 160)]]
    delivered = []

    async def callback(record: Message) -> None:
        delivered.append((record.partition, record.offset))

    called = asyncio.run(drain(tmp_path, chunks, callback))
    consumer = called["consumer"]
    assert delivered == [(m.partition, m.offset) for chunk in chunks for m in chunk]
    assert called["guards"] == [2, 2]  # one wait_first per chunk (record hand-over, flow suspension), not per record
    assert consumer._read_offset[TP(TOPIC, 0)] == 159 and consumer._read_offset[TP(TOPIC, 1)] == 149


def test_records_fetched_while_a_rebalance_changed_the_generation_are_handed_over(tmp_path):
    # getmany takes the generation after its wait for records; a hand-over that compared with the generation from
    # before that wait dropped the whole chunk without counting it read: those events were never processed and the
    # group's committed offsets stopped there (a worker taking over partitions stalled).
    chunks = [[message(0, o) for o in range(5)], [message(0, o) for o in range(5, 8)]]
    delivered = []

    async def callback(record: Message) -> None:
        delivered.append(record.offset)

    asyncio.run(drain(tmp_path, chunks, callback, new_generation=True))
    assert delivered == list(range(8))


def test_a_flow_suspended_during_a_hand_over_leaves_the_rest_of_the_chunk_and_counts_the_one_in_flight_as_read(
    tmp_path,
):
    chunks = [[message(0, o) for o in range(10)]]
    delivered = []
    blocked = asyncio.Event()

    async def callback(record: Message) -> None:
        if record.offset == 5:  # a full stream queue: the hand-over waits
            blocked.set()
            await asyncio.Event().wait()
        delivered.append(record.offset)

    async def rebalance(consumer: Any) -> None:
        await blocked.wait()
        consumer.stop_flow()  # what faust does when partitions are revoked
        await asyncio.sleep(0.05)

    consumer = asyncio.run(drain(tmp_path, chunks, callback, until=rebalance))["consumer"]
    assert delivered == [0, 1, 2, 3, 4]
    # As faust's own loop: the record whose hand-over the suspension abandoned counts as read, the rest do not
    # (the seek to the committed offsets that follows reads them again).
    assert consumer._read_offset[TP(TOPIC, 0)] == 5
    assert not consumer.flow_active


def test_a_record_below_the_read_offset_is_not_handed_over_again(tmp_path):
    delivered = []

    async def callback(record: Message) -> None:
        delivered.append(record.offset)

    asyncio.run(drain(tmp_path, [[message(0, o) for o in range(6)]], callback, read_offset=3))
    assert delivered == [3, 4, 5]
