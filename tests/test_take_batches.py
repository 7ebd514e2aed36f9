"""CommitThenAckStream.take_batches: batches keep filling while a backlog waits, and close on time without one.

The stream is the worker's real stream class inside a faust agent; events are
put on the agent's channel as the consumer would hand them over. A backlog is
made the way it forms in the worker: the agent is busy with a batch (here it
waits on a gate) while more events arrive.
"""

from __future__ import annotations

import asyncio
import time

import faust
import pytest

from streams.app import CommitThenAckStream
import streams.transport as transport


async def run_agent(tmp_path, backlog: int, max_: int, within: float, backlog_within: float,
                    later: int = 0) -> tuple[list[int], float]:
    """Batch sizes: one event, then ``backlog`` events put while the agent holds its first batch, then ``later``
    events put one by one once it has caught up; and the seconds from the last put to its batch."""
    sizes: list[int] = []
    holding = asyncio.Event()
    release = asyncio.Event()
    app = faust.App(f"take-{tmp_path.name}-{backlog}-{later}", broker=f"{transport.SCHEME}://127.0.0.1:1",
                    web_enabled=False, autodiscover=False, datadir=str(tmp_path / "faust"),
                    loop=asyncio.get_running_loop(), Stream=CommitThenAckStream, stream_buffer_maxsize=200_000)

    @app.agent()
    async def agent(stream: CommitThenAckStream) -> None:
        async for batch in stream.take_batches(max_, within, backlog_within):
            sizes.append(len(batch))
            for event in batch:
                await stream.acknowledge(event)
            if len(sizes) == 1:
                holding.set()
                await release.wait()

    async def until(total: int) -> None:
        for _ in range(3000):
            if sum(sizes) >= total:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"only {sum(sizes)} of {total} events were batched: {sizes}")

    async with agent.test_context() as running:
        await running.put(-1, wait=False)
        await holding.wait()
        for n in range(backlog):
            await running.put(n, wait=False)
        release.set()
        await until(1 + backlog)
        last_put = time.monotonic()
        for n in range(later):
            last_put = time.monotonic()
            await running.put(n, wait=False)
        await until(1 + backlog + later)
        return sizes, time.monotonic() - last_put


def test_batches_fill_to_the_maximum_while_a_backlog_waits_however_short_the_window(tmp_path):
    # A 1 ms window drains only part of 2,500 waiting events (faust's take_events closes it there); here each
    # batch keeps filling while events wait, until it holds the maximum or the channel runs dry.
    sizes, _ = asyncio.run(run_agent(tmp_path, backlog=2_500, max_=1_000, within=0.001, backlog_within=30.0))
    assert sizes[0] == 1
    assert sizes[1:3] == [1_000, 1_000]
    assert sum(sizes[3:]) == 500


def test_a_batch_behind_a_backlog_closes_after_the_backlog_wait(tmp_path):
    # No batch waits for more than backlog_within, however many events wait behind it: here 60,000 events
    # queue up and the maximum is out of reach, so each batch closes at the 20 ms bound, not at the maximum.
    sizes, _ = asyncio.run(run_agent(tmp_path, backlog=60_000, max_=100_000, within=0.001, backlog_within=0.02))
    assert sum(sizes) == 60_001
    assert len(sizes) > 3
    assert max(sizes) < 60_000


def test_without_a_backlog_a_batch_closes_after_the_window(tmp_path):
    # Once the agent has caught up, the channel is empty when the window closes: the batch goes then, as
    # faust's does, and does not wait for the backlog bound (30 s here).
    sizes, waited = asyncio.run(run_agent(tmp_path, backlog=0, max_=1_000, within=0.01, backlog_within=30.0,
                                          later=3))
    assert sum(sizes) == 4
    assert waited < 5.0


def test_the_backlog_wait_defaults_to_200_ms_and_never_to_less_than_the_batch_wait():
    from pipeline.config import load_settings

    assert load_settings({}).batch_backlog_wait_s == 0.2
    assert load_settings({"CREDITWATCH_BATCH_WAIT_MS": "500"}).batch_backlog_wait_s == 0.5
    assert load_settings({"CREDITWATCH_BATCH_BACKLOG_WAIT_MS": "1000"}).batch_backlog_wait_s == 1.0


def test_a_backlog_wait_shorter_than_the_batch_wait_is_refused_naming_both_settings():
    from pipeline.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as refused:
        load_settings({"CREDITWATCH_BATCH_WAIT_MS": "100", "CREDITWATCH_BATCH_BACKLOG_WAIT_MS": "50"})
    assert str(refused.value) == ("CREDITWATCH_BATCH_BACKLOG_WAIT_MS=50 is shorter than "
                                  "CREDITWATCH_BATCH_WAIT_MS=100")
