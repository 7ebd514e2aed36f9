"""A million customers in state with the RocksDB store (issue 7, 4e).

A worker that takes over partitions restores its Table from the changelog
topic: that is how state reaches a worker in production. So each case puts its
customers into state by writing their records straight onto the changelog
topic of a fresh consumer group (key the customer id, value
``pipeline.engine.encode_record`` of the record the engine built from the
customer's registration and one invoice, partition ``key_partition`` like the
worker's), then starts one ``creditwatch worker`` with
``CREDITWATCH_STORE=rocksdb://`` (SQLite alert store, all detectors and models,
clock ticks every ``TICK_MS``), which restores them into RocksDB, and lets it
consume a stream of new events published beforehand.

Building a million records through the engine takes ~6 CPU minutes here, so
the engine builds one record per invoice amount (``TEMPLATES``) for a template
customer id, and each customer's record is its template's layout with the id
replaced, compressed by the codec (the benchmark checks that sampled records
decode to the ledger the engine builds for that customer).

Both cases in one run, one after the other, each on topics and a consumer group
of its own, with the same stream: ``UNITS`` units, each either a payment of
1.00 against the customer's prefilled invoice plus a new invoice (existing
customer) or, every ``NEW_EVERY``-th unit, a registration of a new customer.
The small case's units go round its ``SMALL`` customers; the large case's go to
distinct customers spread over all of its ``LARGE``.

A third case restores the large case's customers with faust's own RocksDB
options (``CREDITWATCH_ROCKSDB_WRITE_BUFFER_MB=0``, ``..._BLOCK_CACHE_MB=0``) to
show what the options do to memory.

The restore must have put the customers in state: /metrics counts a table
restore, no event is dead-lettered, and the positions the worker stored for
sampled customers carry the prefilled name and exposure (prefilled invoice less
the payment, plus the new invoice); the run fails otherwise.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.worker_throughput import (
    bench_broker, bench_env, cpu_seconds, handled, load_average, machine, metrics, new_prefix, rss_bytes, run_worker,
    scratch,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = 5_000
LARGE = 1_000_000
#: CREDITWATCH_STATE_CACHE for both cases: decoded records kept in memory in front of RocksDB.
CACHE = 5_000
#: Stream units (a payment and an invoice for an existing customer, or a new customer's registration).
UNITS = 15_000
NEW_EVERY = 20
TEMPLATES = 900
#: Clock ticks on, as in production (the default is 30 s): the first tick after the restore rebuilds the
#: wake-up schedule from the table.
TICK_MS = 5_000
GOAL = 0.8
PAYMENT = Decimal("1.00")
NEW_INVOICE = Decimal("50.00")


def cid(c: int) -> str:
    return f"R{c:07d}"


def prefilled_amount(c: int) -> Decimal:
    return Decimal(f"{100 + c % TEMPLATES}.00")


def _registration(customer_id: str, stamp: str) -> bytes:
    return json.dumps({
        "event_id": f"{customer_id}-r", "type": "customer.registered", "customer_id": customer_id,
        "occurred_at": stamp, "name": f"Customer {customer_id}", "country": "DE", "industry": "retail",
        "credit_limit": "20000", "currency": "EUR", "payment_terms_days": 30}).encode()


def _invoice(customer_id: str, n: int, amount: Decimal, now: datetime) -> bytes:
    return json.dumps({
        "event_id": f"{customer_id}-i{n}", "type": "invoice.issued", "customer_id": customer_id,
        "occurred_at": now.isoformat(), "invoice_id": f"{customer_id}-{n}", "amount": str(amount),
        "currency": "EUR", "issued_on": now.date().isoformat(),
        "due_on": (now.date() + timedelta(days=30)).isoformat()}).encode()


def _payment(customer_id: str, n: int, now: datetime) -> bytes:
    return json.dumps({
        "event_id": f"{customer_id}-p{n}", "type": "payment.received", "customer_id": customer_id,
        "occurred_at": now.isoformat(), "payment_id": f"{customer_id}-P{n}", "amount": str(PAYMENT),
        "currency": "EUR", "received_on": now.date().isoformat(), "invoice_id": f"{customer_id}-1"}).encode()


def _engine() -> Any:
    from detectors.config import Thresholds
    from pipeline.config import load_settings
    from pipeline.engine import RiskEngine
    from streams.runtime import build_models

    settings = load_settings({})
    thresholds = Thresholds()
    return RiskEngine(thresholds, settings.ledger, build_models(thresholds, settings), None)


def _build(engine: Any, customer_id: str, amount: Decimal, now: datetime) -> Any:
    from pipeline.events import parse_event

    record = None
    for raw in (_registration(customer_id, now.isoformat()), _invoice(customer_id, 1, amount, now)):
        record, _ = engine.on_event(record, parse_event(raw), now)
    return record


class Prefill:
    """Records of customers ``cid(c)``: the engine's record of a template customer, the id replaced."""

    def __init__(self, now: datetime):
        from pipeline import codec

        from streams.runtime import wake_key

        self.now = now
        self.compress = codec._CODECS.compressor(codec.CURRENT).compress
        self.head = bytes((codec.CURRENT,))
        self.with_wake = codec.with_wake
        engine = _engine()
        self.layouts = []
        #: (written on, wake-up day, key) as the worker writes them before each record (``WorkerRuntime.table_value``)
        self.wakes = []
        today = now.date()
        for k in range(TEMPLATES):
            record = _build(engine, self.template_id(k), prefilled_amount(k), now)
            self.layouts.append(codec.layout_json(record.ledger, record.risk.to_json()))
            wake = engine.next_wake(record, today)
            self.wakes.append((today.toordinal(), wake.toordinal() if wake else 0, wake_key(engine)))

    @staticmethod
    def template_id(k: int) -> str:
        return f"Q{k:07d}"

    def value(self, c: int) -> bytes:
        k = c % TEMPLATES
        layout = self.layouts[k].replace(self.template_id(k).encode(), cid(c).encode())
        return self.with_wake(self.head + self.compress(layout), *self.wakes[k])

    def check(self, samples: list[int]) -> None:
        """Each sampled record decodes to the ledger the engine builds for that customer from its events."""
        from pipeline.engine import decode_record
        from pipeline.ledger import state_to_dict

        engine = _engine()
        for c in samples:
            built = _build(engine, cid(c), prefilled_amount(c), self.now)
            decoded = decode_record(self.value(c))
            if state_to_dict(decoded.ledger) != state_to_dict(built.ledger):
                raise AssertionError(f"prefilled record of {cid(c)} differs from the engine's")


def prefill_changelog(settings: Any, prefill: Prefill, customers: int) -> tuple[float, int]:
    """Write the customers' records onto the worker's changelog topic; (seconds, bytes of values)."""
    from kafka import KafkaProducer

    from streams.admin import ensure_topics
    from streams.app import changelog_topic_name, key_partition

    topic = changelog_topic_name(settings)
    ensure_topics(settings.bootstrap_servers, {topic: settings.partitions})
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1, linger_ms=50,
                             batch_size=1 << 20, max_request_size=8 << 20,
                             max_in_flight_requests_per_connection=5)
    started = time.perf_counter()
    size = 0
    try:
        for first in range(0, customers, 100_000):
            for c in range(first, min(customers, first + 100_000)):
                key = cid(c).encode()
                value = prefill.value(c)
                size += len(value)
                producer.send(topic, key=key, value=value, partition=key_partition(key, settings.partitions))
            producer.flush(timeout=300)
    finally:
        producer.close(timeout=30)
    return time.perf_counter() - started, size


def stream_units(customers: int, now: datetime) -> tuple[list[tuple[str, bytes, bytes]], dict[str, Decimal]]:
    """(kind, key, value) of the stream, and the exposure each touched existing customer must end with."""
    spread = random.Random(7).sample(range(customers), min(customers, UNITS)) if customers >= UNITS else None
    out: list[tuple[str, bytes, bytes]] = []
    payments: dict[str, int] = {}
    for u in range(UNITS):
        if u % NEW_EVERY == NEW_EVERY - 1:
            new = f"N{u:07d}"
            out.append(("customers", new.encode(), _registration(new, now.isoformat())))
            continue
        c = spread[u] if spread is not None else u % customers
        customer_id = cid(c)
        n = payments[customer_id] = payments.get(customer_id, 0) + 1
        out.append(("payments", customer_id.encode(), _payment(customer_id, n, now)))
        out.append(("invoices", customer_id.encode(), _invoice(customer_id, n + 1, NEW_INVOICE, now)))
    expected = {customer_id: prefilled_amount(int(customer_id[1:])) + n * (NEW_INVOICE - PAYMENT)
                for customer_id, n in payments.items()}
    return out, expected


def publish(settings: Any, records: list[tuple[str, bytes, bytes]]) -> float:
    from kafka import KafkaProducer

    from streams.admin import ensure_topics

    ensure_topics(settings.bootstrap_servers, {topic: settings.partitions for topic in settings.input_topics})
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=20,
                             batch_size=256 * 1024, max_in_flight_requests_per_connection=1)
    started = time.perf_counter()
    try:
        for kind, key, value in records:
            producer.send(settings.topic(kind), key=key, value=value)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    return time.perf_counter() - started


def check_positions(db: Path, expected: dict[str, Decimal], sample: int = 300) -> int:
    """Sampled customers' stored positions: the prefilled name, and the exposure the stream leaves."""
    chosen = random.Random(11).sample(sorted(expected), min(sample, len(expected)))
    with sqlite3.connect(db) as connection:
        rows = {row[0]: row[1:] for row in connection.execute(
            f"SELECT customer_id, name, exposure FROM customer_positions WHERE customer_id IN "
            f"({','.join('?' * len(chosen))})", chosen)}
    for customer_id in chosen:
        if customer_id not in rows:
            raise AssertionError(f"no position stored for {customer_id}")
        name, exposure = rows[customer_id]
        if name != f"Customer {customer_id}" or Decimal(str(exposure)) != expected[customer_id]:
            raise AssertionError(f"{customer_id}: position {name!r} {exposure} does not build on the prefilled "
                                 f"record (expected exposure {expected[customer_id]}): the restore did not put it "
                                 "in state")
    return len(chosen)


def run_case(broker: Any, folder: Path, prefill: Prefill, customers: int, tag: str, now: datetime,
             **options: Any) -> dict[str, Any]:
    from tests.worker_harness import settings_of

    prefix = new_prefix()
    group_env = bench_env(broker, folder, prefix, tag)
    settings = settings_of(group_env)
    records, expected = stream_units(customers, now)
    publish(settings, records)
    db = folder / f"{tag}.db"
    # run_worker names the group itself: the changelog must be the one of that group, so it is given here.
    group = f"{prefix}{tag}-g"
    prefill_s, size = prefill_changelog(settings_of({**group_env, "CREDITWATCH_CONSUMER_GROUP": group}), prefill,
                                        customers)
    samples: list[dict[str, Any]] = []

    def sample(elapsed: float, workers: list[Any], ports: list[int]) -> None:
        values = metrics(ports[0])
        if values:
            samples.append({"t": elapsed, "events": handled(values), "rss": rss_bytes(workers[0].pid),
                            "cpu": cpu_seconds(workers[0].pid), "load": load_average(),
                            "restores": values.get("creditwatch_table_restores_total", 0),
                            "dead": values.get("creditwatch_events_dead_lettered_total", 0),
                            "rebuilds": values.get("creditwatch_wake_rebuilds_total", 0),
                            "rebuild_s": values.get("creditwatch_wake_rebuild_seconds_total", 0),
                            "rebuild_records": values.get("creditwatch_wake_rebuild_records_total", 0),
                            "rebuild_decoded": values.get("creditwatch_wake_rebuild_decoded_total", 0),
                            "scheduled": values.get("creditwatch_wake_scheduled", 0)})

    before = _du(folder)
    try:
        result = run_worker(broker, folder, prefix, len(records), tag=tag, sample=sample, ready_timeout=1_800,
                            group=group, CREDITWATCH_STORE="rocksdb://", CREDITWATCH_STATE_CACHE=CACHE,
                            CREDITWATCH_TICK_INTERVAL_MS=TICK_MS, CREDITWATCH_DATABASE_URL=f"sqlite:///{db}",
                            **options)
    finally:
        log = folder / "logs" / f"{tag}.stderr"
        text = log.read_text(errors="replace") if log.exists() else ""
        if log.exists():  # kept for a look afterwards
            (ROOT / ".bench").mkdir(exist_ok=True)
            shutil.copyfile(log, ROOT / ".bench" / f"worker_rocksdb_{tag}.stderr")
    last = samples[-1] if samples else {}
    if not last.get("restores"):
        raise AssertionError(f"{tag}: /metrics counts no table restore")
    if last.get("dead"):
        raise AssertionError(f"{tag}: {last['dead']:.0f} events dead-lettered")
    checked = check_positions(db, expected)
    if not last.get("rebuilds"):
        raise AssertionError(f"{tag}: no wake-up schedule rebuild in /metrics (clock ticks every {TICK_MS} ms)")
    return {**result, "customers": customers, "prefill_s": prefill_s, "prefill_bytes": size, "samples": samples,
            "checked": checked, "disk": _du(folder) - before, "last": last, "stderr_lines": len(text.splitlines())}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _windows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    picked = [s for n, s in enumerate(samples) if n % max(1, len(samples) // 10) == 0]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return picked


def _after_rebuild(case: dict[str, Any]) -> tuple[float, float]:
    """events/s and events per CPU s from the first sample after the wake-up schedule rebuild to the last."""
    samples = case["samples"]
    start = next((s for s in samples if s["rebuilds"] >= 1), None)
    end = samples[-1] if samples else None
    if start is None or end is None or end["t"] <= start["t"] or end["cpu"] <= start["cpu"]:
        return 0.0, 0.0
    done = end["events"] - start["events"]
    return done / (end["t"] - start["t"]), done / (end["cpu"] - start["cpu"])


#: faust's own RocksDB options (3 memtables of 64 MiB and a 2 GiB block cache per partition) for the comparison.
FAUST_DEFAULTS = {"CREDITWATCH_ROCKSDB_WRITE_BUFFER_MB": 0, "CREDITWATCH_ROCKSDB_BLOCK_CACHE_MB": 0}


def run(quick: bool = False) -> str:
    global UNITS
    from pipeline.config import load_settings

    small, large = (1_000, 50_000) if quick else (SMALL, LARGE)
    if quick:
        UNITS = 3_000
    defaults = load_settings({})
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    prefill = Prefill(now)
    prefill.check(random.Random(3).sample(range(large), 20))
    template_s = time.perf_counter() - t0
    with bench_broker() as broker, scratch("rocksdb") as folder:
        cases = [("small", run_case(broker, folder, prefill, small, "small", now)),
                 ("large", run_case(broker, folder, prefill, large, "large", now)),
                 ("large, faust's RocksDB options", run_case(broker, folder, prefill, large, "large-faust", now,
                                                             **FAUST_DEFAULTS))]
    small_case, large_case, faust_case = (case for _, case in cases)
    keep = ROOT / ".bench" / "worker_rocksdb_samples.json"
    keep.parent.mkdir(exist_ok=True)
    keep.write_text(json.dumps({name: {k: v for k, v in case.items() if isinstance(v, (int, float, str, list, dict))}
                                for name, case in cases}, default=str))
    rows = [
        "## RocksDB store: a million customers in state",
        "",
        f"Measured {started} by `benchmarks/worker_rocksdb.py`. Each case writes its customers' records straight "
        "onto the changelog topic of a fresh consumer group (the engine's record of a registration and one invoice, "
        "behind the wake-up header the worker writes; "
        f"{TEMPLATES} records built by the engine for a template id, each customer's the template's with its id, "
        f"{template_s:.0f} s for the templates and a check of 20 sampled records against the engine), then starts "
        "one `creditwatch worker` with `CREDITWATCH_STORE=rocksdb://`, which restores them into RocksDB, and lets "
        f"it consume a stream published beforehand: {UNITS:,} units, each a payment of {PAYMENT} against the "
        f"customer's prefilled invoice and a new invoice, or (one in {NEW_EVERY}) a new customer's registration; the "
        "small case's units go round its customers, the large case's to distinct customers spread over all of them. "
        f"`CREDITWATCH_STATE_CACHE={CACHE:,}`, SQLite alert store, all detectors and models, clock ticks every "
        f"{TICK_MS / 1000:g} s (the first tick after the restore rebuilds the wake-up schedule from the table, "
        "holding batches meanwhile), fresh embedded Tansu broker. RocksDB options per partition: "
        f"{defaults.rocksdb_write_buffer_mb} MiB memtables (2 at most) and a {defaults.rocksdb_block_cache_mb} MiB "
        "block cache (the defaults now), or faust's (3 × 64 MiB memtables, 2 GiB block cache). "
        f"Machine: {machine()}. Cases one after the other in this order.",
        "",
        "| case | customers restored | changelog written s (MiB) | start → ready s (restore) | RSS at ready MiB | "
        "stream events | ready → committed s | events/s | events per CPU s | after the rebuild: events/s, per CPU s "
        "| peak RSS MiB | wake-up schedule rebuild | load average before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, case in cases:
        first = case["samples"][0] if case["samples"] else {"rss": 0}
        last = case["last"]
        rebuild = (f"{last['rebuild_records']:,.0f} records ({last['rebuild_decoded']:,.0f} decoded) in "
                   f"{last['rebuild_s']:.1f} s, {last['scheduled']:,.0f} customers scheduled")
        after, after_cpu = _after_rebuild(case)
        rows.append(
            f"| {name} | {case['customers']:,} | {case['prefill_s']:.0f} ({case['prefill_bytes'] / 2**20:,.0f}) | "
            f"{case['startup']:.0f} | {first['rss'] / 2**20:,.0f} | {case['events']:,} | {case['committed_s']:.1f} | "
            f"{case['rate']:,.0f} | {case['events'] / case['cpu']:,.0f} | {after:,.0f}, {after_cpu:,.0f} | "
            f"{case['rss'] / 2**20:,.0f} | {rebuild} | {case['load']} → {case['load_after']} |")
    ratio = large_case["rate"] / small_case["rate"]
    cpu_ratio = (large_case["events"] / large_case["cpu"]) / (small_case["events"] / small_case["cpu"])
    small_after, small_after_cpu = _after_rebuild(small_case)
    large_after, large_after_cpu = _after_rebuild(large_case)
    after_ratio = large_after / small_after if small_after else 0.0
    after_cpu_ratio = large_after_cpu / small_after_cpu if small_after_cpu else 0.0
    growth = (large_case["rss"] - small_case["rss"]) / (large_case["customers"] - small_case["customers"])
    rows += [
        "",
        f"Large case against small, whole stream (the large case's includes its one-off schedule rebuild): "
        f"**{ratio:.2f}×** in events/s, {cpu_ratio:.2f}× in events per CPU s; after the rebuild: "
        f"**{after_ratio:.2f}×** and {after_cpu_ratio:.2f}× (goal ≥ {GOAL:.1f}×). Peak RSS grew "
        f"{growth:,.0f} bytes per customer from the small case to the large one (the wake-up schedule keeps one "
        f"day per customer; the decoded records are capped at {CACHE:,}, RocksDB's memtables and block cache by its "
        f"options). RocksDB files and the SQLite store of the large case: {large_case['disk'] / 2**20:,.0f} MiB on "
        "disk. Every case: a table restore counted in /metrics, no dead letter, and the stored positions of "
        f"{large_case['checked']} sampled customers carry the prefilled name and the prefilled invoice less the "
        "payment plus the new invoice (the payment acted on the restored ledger).",
    ]
    for name, case in cases[1:]:
        rows += [
            "",
            f"{name[0].upper()}{name[1:]}: the worker from its ready line.",
            "",
            "| s since ready | events | RSS MiB | events/s (window) | events per CPU s (window) | load average |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        previous = None
        for s in _windows(case["samples"]):
            rate = cpu_rate = 0.0
            if previous is not None:
                dt, dcpu = s["t"] - previous["t"], s["cpu"] - previous["cpu"]
                rate = (s["events"] - previous["events"]) / dt if dt else 0.0
                cpu_rate = (s["events"] - previous["events"]) / dcpu if dcpu else 0.0
            rows.append(f"| {s['t']:.0f} | {s['events']:,.0f} | {s['rss'] / 2**20:,.0f} | {rate:,.0f} | "
                        f"{cpu_rate:,.0f} | {s['load']} |")
            previous = s
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(run(quick="--quick" in sys.argv))
