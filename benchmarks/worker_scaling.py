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
import os
import time
import uuid
from typing import Any, Iterator

from benchmarks.worker_throughput import (
    CUSTOMERS, DAYS, bench_broker, bench_env, machine, new_prefix, publish_lines, run_worker, scratch, stream,
)

EVENTS = 8_000
POSTGRES = os.environ.get("CREDITWATCH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(POSTGRES)
    name = f"creditwatch_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
        "| workers | events | wall s | events/s | worker CPU s (sum) | events per CPU s | peak RSS MiB (sum) | events handled by each | load average at start → end |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for count, result in results.items():
        rows.append(
            f"| {count} | {total:,} | {result['committed_s']:.1f} | {result['rate']:,.0f} | {result['cpu']:.1f} | "
            f"{total / result['cpu']:,.0f} | {result['rss'] / 2**20:,.0f} | "
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
