"""One worker vs two workers in one group on the same backlog, 8 partitions (issue 7, 4d).

The same simulated events as ``worker_throughput`` (published once to 3
topics × 8 partitions of a fresh embedded broker) are consumed, one after the
other in this run, by (1) one ``creditwatch worker`` and (2) two workers in
one consumer group, each case with a consumer group and a PostgreSQL database
of its own (the store two workers share in production; SQLite allows one
writer at a time). Timed from the first worker's ready line until every
source offset is committed, so the two-worker case includes its rebalance
when the second worker joins.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from benchmarks.worker_throughput import (
    CUSTOMERS, DAYS, bench_broker, bench_env, machine, new_prefix, publish_lines, run_worker, scratch, stream,
)

EVENTS = 20_000


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); its URL. Two workers need one shared store."""
    from benchmarks.web_pages import postgres_database as fresh_postgres_database

    with fresh_postgres_database() as url:
        if url is None:
            raise RuntimeError("PostgreSQL is unavailable: one vs two workers needs a database both can write")
        yield url


def run(quick: bool = False) -> str:
    from tests.worker_harness import settings_of

    lines = stream(limit=3_000 if quick else EVENTS)
    total = len(lines)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[int, dict[str, Any]] = {}
    with bench_broker() as broker, scratch("scaling") as folder:
        prefix = new_prefix()
        publish_lines(settings_of(bench_env(broker, folder, prefix, "publisher")), lines)
        for count in (1, 2):
            with postgres_database() as url:
                results[count] = run_worker(broker, folder, prefix, total, tag=f"w{count}x", count=count,
                                            CREDITWATCH_DATABASE_URL=url)
    one, two = results[1], results[2]
    rows = [
        "## One worker vs two workers (8 partitions)",
        "",
        f"Measured {started} by `benchmarks/worker_scaling.py`: the first {total:,} events of "
        f"`simulate(customers={CUSTOMERS:,}, days={DAYS}, seed=1)` published once to 3 topics × 8 partitions of one "
        "embedded Tansu broker, then consumed by one worker and by two workers in one consumer group, one case "
        "after the other in this run, each with a fresh group and a fresh PostgreSQL database (the shared store); "
        "all detectors and models, clock ticks off. Timed from the first ready line until all offsets are "
        f"committed (the two-worker case includes the rebalance when the second joins). Machine: {machine()}, "
        "2 cores shared with other work: two workers can use at most the second core.",
        "",
        "| workers | events | wall s | events/s | worker CPU s (sum) | their child processes' CPU s (sum) | events per CPU s (workers and children) | peak RSS MiB (sum of workers) | events handled by each | load average at start → end |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for count, result in results.items():
        rows.append(
            f"| {count} | {total:,} | {result['committed_s']:.1f} | {result['rate']:,.0f} | {result['cpu']:.1f} | "
            f"{result['children_cpu']:.1f} | {total / (result['cpu'] + result['children_cpu']):,.0f} | "
            f"{result['rss'] / 2**20:,.0f} | "
            f"{' + '.join(f'{n:,.0f}' for n in result['handled_by'])} | {result['load']} → {result['load_after']} |"
        )
    rows += [
        "",
        f"Two workers: **{two['rate'] / one['rate']:.2f}×** the events/s of one "
        f"(start-up {one['startup']:.1f} s for one; {two['startup']:.1f} s for the slower of two, "
        f"{two['ready_spread']:.1f} s apart; not counted).",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(run(quick="--quick" in sys.argv))
