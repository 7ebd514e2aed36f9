"""The outbox relay inside the worker or in a child process (``CREDITWATCH_DELIVERY=inline`` vs ``process``).

The same backlog (the first events of the simulated portfolio of
``worker_throughput``, published once to a fresh embedded broker) is consumed
by one ``creditwatch worker`` per run, each with a consumer group and SQLite
store of its own, the modes alternating (inline, process, inline, process) so
that the machine's other load falls on both. Sinks: the Kafka alert topic and
the console (stdout to a file), as in ``worker_throughput``'s worker run.

Per run: events/s from the ready line until every source offset is
committed; then the wait until the store holds no pending delivery (every
delivery ``delivered``, checked); CPU seconds of the worker process and of its
delivery child (sampled from /proc while it lives) over the whole run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.worker_throughput import (
    NO_TICKS_MS, bench_broker, bench_env, cpu_seconds, end_offsets_of, free_port, handled, load_average, machine,
    metrics, new_prefix, publish_lines, scratch, start_worker, stream,
)

EVENTS = 20_000
MODES = ("inline", "process", "inline", "process")


def run_mode(broker: Any, folder: Path, prefix: str, total: int, mode: str, n: int,
             timeout: float = 3_600) -> dict[str, Any]:
    """One worker in ``mode`` over the backlog: rate until committed, drain of the outbox, CPU of both processes."""
    from sinks.store import AlertStore
    from tests.worker_harness import committed_offsets, delivery_children, settings_of

    port = free_port()
    env = bench_env(broker, folder, prefix, f"{mode}{n}", CREDITWATCH_HEALTH_PORT=port,
                    CREDITWATCH_TICK_INTERVAL_MS=NO_TICKS_MS, CREDITWATCH_DELIVERY=mode)
    settings = settings_of(env)
    ends = end_offsets_of(settings)
    load_before = load_average()
    worker = start_worker(env, folder, f"{mode}{n}")
    store = AlertStore(settings.resolved_database_url)
    child_cpu0: dict[int, float] = {}
    child_cpu: dict[int, float] = {}

    def sample_children() -> None:
        for pid in delivery_children(worker.pid):
            try:
                seconds = cpu_seconds(pid)
            except OSError:
                continue
            child_cpu0.setdefault(pid, seconds)
            child_cpu[pid] = seconds

    try:
        startup = worker.wait_ready(timeout=300)
        began = worker.started_at + startup
        cpu0 = cpu_seconds(worker.pid)
        sample_children()
        deadline = time.monotonic() + timeout
        committed_at = processed_at = None
        while True:
            sample_children()
            if not worker.alive():
                raise RuntimeError(f"{worker.name} died; stderr:\n{worker.stderr_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: not done within {timeout:g}s")
            if processed_at is None and handled(metrics(port)) >= total:
                processed_at = time.monotonic()
            if processed_at is not None and committed_at is None:
                committed = committed_offsets(settings.bootstrap_servers, settings.consumer_group)
                if all(committed.get(tp, 0) >= end for tp, end in ends.items()):
                    committed_at = time.monotonic()
                    cpu_at_commit = cpu_seconds(worker.pid) - cpu0
            if committed_at is not None:
                counts = store.delivery_counts()
                if counts and not counts.get("pending"):
                    drained_at = time.monotonic()
                    break
            time.sleep(0.5)
        cpu = cpu_seconds(worker.pid) - cpu0
        sample_children()
        child = sum(child_cpu[pid] - child_cpu0[pid] for pid in child_cpu)
        return {
            "mode": mode, "events": total, "startup": startup, "committed_s": committed_at - began,
            "rate": total / (committed_at - began), "drained_s": drained_at - began,
            "cpu_at_commit": cpu_at_commit, "cpu": cpu, "child_cpu": child, "children": len(child_cpu),
            "deliveries": counts, "alerts": metrics(port).get("creditwatch_alerts_total", 0),
            "delivered_metric": metrics(port).get("creditwatch_deliveries_delivered_total", 0),
            "load": load_before, "load_after": load_average(),
        }
    finally:
        store.close()
        worker.terminate()


def run(quick: bool = False) -> str:
    from tests.worker_harness import settings_of

    lines = stream(limit=3_000 if quick else EVENTS)
    total = len(lines)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with bench_broker() as broker, scratch("delivery") as folder:
        prefix = new_prefix()
        publish_lines(settings_of(bench_env(broker, folder, prefix, "publisher")), lines)
        results = [run_mode(broker, folder, prefix, total, mode, n + 1) for n, mode in enumerate(MODES)]
    rows = []
    for r in results:
        every = "yes" if set(r["deliveries"]) == {"delivered"} else f"no: {r['deliveries']}"
        rows.append(
            f"| {r['mode']} | {r['events']:,} | {r['committed_s']:.1f} | {r['rate']:,.0f} | {r['cpu_at_commit']:.1f} | "
            f"{r['cpu']:.1f} | {r['child_cpu']:.1f} | {r['cpu'] + r['child_cpu']:.1f} | {r['drained_s']:.1f} | "
            f"{sum(r['deliveries'].values()):,} ({every}; /metrics {r['delivered_metric']:,.0f}) | "
            f"{r['load']} → {r['load_after']} |"
        )
    return "\n".join([
        "## Worker: outbox delivery inline vs in a child process",
        "",
        f"Measured {started} by `benchmarks/worker_delivery.py`: the first {total:,} events of the simulated "
        "portfolio, published once; one `creditwatch worker` per row, alternating modes, each with its own group "
        f"and SQLite store; sinks Kafka alert topic + console. Clock ticks off. Machine: {machine()}.",
        "",
        "| CREDITWATCH_DELIVERY | events | ready → committed s | events/s | worker CPU s to commit | worker CPU s "
        "to drained | child CPU s | total CPU s | ready → outbox drained s | deliveries (all delivered?) | "
        "load average before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        *rows,
    ])


if __name__ == "__main__":
    import sys

    print(run(quick="--quick" in sys.argv))
