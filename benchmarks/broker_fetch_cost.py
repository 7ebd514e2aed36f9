"""The embedded Tansu broker's CPU for a consumer that keeps up, as the log grows (a defect we design around).

One fresh embedded broker, the benchmark's 3 topics × 8 partitions. A producer
sends a steady 1,000 events/s (the latency benchmark's live mix) in windows of
``WINDOW_S`` seconds:

1. with no consumer (the producer's own cost to the broker);
2. then, window after window, with one raw aiokafka consumer (no group, fetch
   wait 20 ms like the worker) reading everything as it arrives.

For each window: the broker process's CPU seconds per second and the number of
records in the logs at its end. On Kafka a consumer that keeps up costs the
broker about the same whatever the log's length; on Tansu's in-memory storage
the cost of the same traffic grows with the log, so every consumer of the
same topics (the worker, a monitoring consumer) takes CPU from the others on
a small machine. Hence the latency benchmark measures the broker's share
inside the worker instead of with a second consumer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone
from typing import Any

from benchmarks.worker_throughput import bench_broker, bench_env, cpu_seconds, load_average, machine, new_prefix, scratch

WINDOW_S = 10
RATE = 1_000
WINDOWS_WITH_CONSUMER = 4


class Follower:
    """A raw aiokafka consumer in a thread that reads every input partition from its end onwards."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.read = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from streams.admin import high_watermarks

        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, fetch_max_wait_ms=self.settings.fetch_max_wait_ms)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(t, p) for t in self.settings.input_topics
                             for p in range(self.settings.partitions)])
            for topic in self.settings.input_topics:  # true ends (Tansu's ListOffsets(latest) is not)
                for partition, end in high_watermarks(self.settings.bootstrap_servers, topic).items():
                    consumer.seek(TopicPartition(topic, partition), end)
            self.ready.set()
            while not self.stop.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                self.read += sum(len(messages) for messages in batches.values())
        finally:
            await consumer.stop()


def run(quick: bool = False) -> str:
    from benchmarks.worker_latency import _registrations, produce_steady
    from benchmarks.worker_throughput import publish_lines
    from tests.worker_harness import settings_of

    window = 3 if quick else WINDOW_S
    windows = 2 if quick else WINDOWS_WITH_CONSUMER
    started_text = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    with bench_broker() as broker, scratch("fetchcost") as folder:
        if not broker.pid:
            return "## Embedded broker: fetch cost as the log grows\n\nNot measured: the broker's process is not ours."
        settings = settings_of(bench_env(broker, folder, new_prefix(), "fetchcost"))
        today = datetime.now(timezone.utc).date()
        publish_lines(settings, _registrations(today)[:10])  # creates the topics
        in_log = 10
        follower = None
        for index in range(windows + 1):
            if index == 1:
                follower = Follower(settings)
                follower.thread.start()
                follower.ready.wait(30)
            cpu0, wall0 = cpu_seconds(broker.pid), time.monotonic()
            read0 = follower.read if follower else 0
            _, sent, _ = produce_steady(settings, window, RATE, today, phase=index)
            time.sleep(0.5)  # let the follower catch the last records
            wall = time.monotonic() - wall0
            in_log += sent
            rows.append((
                "none" if follower is None else "one raw aiokafka consumer", sent, in_log,
                (cpu_seconds(broker.pid) - cpu0) / wall, (follower.read - read0) if follower else 0, load_average(),
            ))
        if follower is not None:
            follower.stop.set()
            follower.thread.join(10)

    lines = [
        "## Embedded broker: fetch cost as the log grows",
        "",
        f"Measured {started_text} by `benchmarks/broker_fetch_cost.py`: one fresh embedded Tansu broker (in-memory "
        f"storage), 3 topics × 8 partitions; a producer sends a steady {RATE:,} events/s in windows of {window} s, "
        "first with no consumer, then with one raw aiokafka consumer (no group, fetch wait "
        f"{settings.fetch_max_wait_ms} ms) that reads every record as it arrives. Machine: {machine()}.",
        "",
        "| window | consumer | records sent | records in the logs at the end | records read | broker CPU (share of one core) | load average |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for number, (consumer, sent, total, share, read, load) in enumerate(rows, 1):
        lines.append(f"| {number} | {consumer} | {sent:,} | {total:,} | {read:,} | {share:.2f} | {load} |")
    first, last = rows[1][3], rows[-1][3]
    lines += [
        "",
        f"The same traffic costs the broker {last / first:.1f}× as much CPU in the last window as in the first "
        f"with the consumer ({first:.2f} → {last:.2f} of a core) while the log grew from {rows[1][2]:,} to "
        f"{rows[-1][2]:,} records; the producer alone costs {rows[0][3]:.2f}. A defect of the embedded broker's "
        "storage, not of Kafka: the production deployment (`deploy/`) runs Apache Kafka. Designed around: the "
        "latency benchmark takes the broker's share from the worker's own histogram "
        "(`creditwatch_event_to_agent_seconds`) instead of a second consumer, and reports the broker's CPU.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(run(quick="--quick" in sys.argv))
