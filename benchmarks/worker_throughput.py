"""Worker throughput on the embedded broker (issue 7, 4a), and the worker's hot path profiled (issue 7, 5).

The same topic content (the first events of a simulated portfolio, published
once) is read, one after the other in one run, by:

(i)   a raw aiokafka consumer that only reads the topics;
(ii)  a framework-free loop: aiokafka ``getmany`` + ``BatchProcessor`` (JSON
      decode, ``parse_event``, the same ``RiskEngine`` with all detectors and
      models the worker runs), alerts into a ``MemorySink``; no faust;
(ii+) the same loop plus everything the worker does per batch besides faust:
      each touched customer's record encoded (the Table value), the batch's
      alerts, outbox rows, positions, snapshots and events committed to a
      SQLite store (``WorkerRuntime.persist``), the wake-up schedule;
(iii) the real ``creditwatch worker`` process (all detectors, models, the SQL
      store on a SQLite file, the outbox delivering to the Kafka alert topic
      and the console), timed from its ready line until every source offset
      is committed; its start-up time is reported separately.

Then (unless ``quick``) a second worker on the same topics with a fresh group
runs under ``py-spy record`` and its samples are summed by where the time
goes (faust/mode, aiokafka, the store, JSON, the engine...).

Clock ticks are disabled in (ii+) and (iii) (tick interval 1 h): they are a
per-customer-day cost measured by the backtest benchmark, not a per-event one.

The helpers here (broker, publishing, a worker run, /metrics, CPU and RSS of a
process) are used by the other ``worker_*`` benchmarks too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
CUSTOMERS, DAYS = 2_000, 365  # a full year per customer: ~101k events in all
#: Events read by each consumer. The worker stores ~0.4 alert updates per event of a backlog (see run());
#: at ~80-150 events/s on this shared machine, 100k would take 10-20 minutes per worker run.
EVENTS = 20_000
#: Rounds of (ii) and (iii), taking turns. The broker hands each consumer the three topics' records in its own
#: interleaving, and the engine's work follows it (a customer's payments read before or after its invoices
#: raise different alerts): (ii)'s alert count moved by a fifth between two runs of the same code. So the
#: goals are judged on the medians of several rounds, not on one pair.
ROUNDS = 3
GOAL_RATE, GOAL_SHARE = 3_000, 0.5
NO_TICKS_MS = 3_600_000

# --- machine, processes ------------------------------------------------------------------


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (5-min {five:.1f})"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The machine and how fast it runs now: the same model name has run 1.6-2.7× apart between sessions."""
    from benchmarks.backtest_speed import ISSUE_JSON_LOADS_US, calibrate

    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; `json.loads` of a small "
            f"event {calibrate():.1f} µs when the section was written (the issue measured "
            f"{ISSUE_JSON_LOADS_US:.0f} µs on its machine)")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """CPU seconds of the live child processes of ``pid`` (a worker's store writer and delivery process)."""
    from tests.worker_harness import children

    total = 0.0
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    from streams.broker import free_port as pick

    return pick()


# --- broker, topics, publishing --------------------------------------------------------------


@contextlib.contextmanager
def bench_broker() -> Iterator[Any]:
    """A fresh embedded Tansu broker for one benchmark (``CREDITWATCH_BENCH_BROKER=host:port`` uses a running one)."""
    from streams.broker import EmbeddedBroker

    external = os.environ.get("CREDITWATCH_BENCH_BROKER", "").strip()
    if external:
        host, _, port = external.split("://", 1)[-1].rpartition(":")
        yield EmbeddedBroker(port=int(port), host=host or "127.0.0.1")
        return
    broker = EmbeddedBroker(port=0).start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def scratch(name: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"creditwatch-{name}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_env(broker: Any, folder: Path, prefix: str, tag: str, **extra: Any) -> dict[str, str]:
    """Environment of one worker run: the benchmark's topics, a consumer group and data directory of its own."""
    from tests.worker_harness import cli_env

    group = f"{prefix}{tag}-{uuid.uuid4().hex[:6]}"
    return cli_env(broker, prefix, group, folder / group / "data", **extra)


def new_prefix() -> str:
    return f"b{uuid.uuid4().hex[:8]}."


def stream(customers: int = CUSTOMERS, days: int = DAYS, limit: int | None = None) -> list[bytes]:
    from benchmarks.backtest_speed import stream as cached

    return cached(customers, days, limit=limit)


def publish_lines(settings: Any, lines: list[bytes]) -> dict[str, int]:
    """Publish JSONL lines keyed by customer_id to the topic of their type (topics created first)."""
    from pipeline.events import parse_event
    from streams.admin import ensure_topics
    from tests.worker_harness import publish

    ensure_topics(settings.bootstrap_servers, {topic: settings.partitions for topic in settings.input_topics})
    records = []
    for raw in lines:
        event = parse_event(raw)
        records.append((settings.topic(event.topic_kind), event.customer_id.encode(), raw))
    publish(settings.bootstrap_servers, records, linger_ms=20)
    return dict(Counter(topic for topic, _, _ in records))


def end_offsets_of(settings: Any) -> dict[tuple[str, int], int]:
    from tests.worker_harness import end_offsets

    return end_offsets(settings.bootstrap_servers, settings.input_topics)


# --- a worker run ------------------------------------------------------------------------------


def metrics(port: int) -> dict[str, float]:
    """The worker's /metrics, each metric name summed over its labels; {} while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            sums[name.split("{", 1)[0]] += float(value)
            sums[name] = float(value)
    return dict(sums)


def histogram_buckets(values: dict[str, float], name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of each bucket of a Prometheus histogram, ascending; +Inf as inf."""
    return sorted(
        (float(m.group(1)), count) for key, count in values.items()
        if (m := re.fullmatch(re.escape(name) + r'_bucket\{le="([^"]+)"\}', key))
    )


def histogram_quantile(values: dict[str, float], name: str, q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile of a Prometheus histogram."""
    buckets = [(bound, count) for bound, count in histogram_buckets(values, name) if bound != float("inf")]
    total = values.get(f"{name}_count", 0)
    if not total:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def handled(values: dict[str, float]) -> float:
    return (values.get("creditwatch_events_processed_total", 0) + values.get("creditwatch_events_duplicate_total", 0)
            + values.get("creditwatch_events_dead_lettered_total", 0))


def start_worker(env: dict[str, str], folder: Path, name: str, migrate: bool = True) -> Any:
    from tests.worker_harness import WorkerProcess

    return WorkerProcess(env, folder / "logs", name=name).start(migrate=migrate)


def wait_committed(bootstrap: str, group: str, ends: dict[tuple[str, int], int], workers: list[Any],
                   timeout: float) -> float:
    """Poll the group's committed offsets until they reach ``ends``; return time.monotonic() when they did."""
    from tests.worker_harness import committed_offsets

    deadline = time.monotonic() + timeout
    while True:
        committed = committed_offsets(bootstrap, group)
        if all(committed.get(tp, 0) >= end for tp, end in ends.items()):
            return time.monotonic()
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"{worker.name} died; stderr:\n{worker.stderr_tail()}")
        if time.monotonic() > deadline:
            behind = sum(max(end - committed.get(tp, 0), 0) for tp, end in ends.items())
            raise RuntimeError(f"offsets not committed within {timeout:g}s ({behind} behind)")
        time.sleep(0.2)


def run_worker(broker: Any, folder: Path, prefix: str, total: int, tag: str = "worker", count: int = 1,
               timeout: float = 3_600, profile_seconds: float = 0, sample: Any = None, ready_timeout: float = 300,
               group: str | None = None, **extra: Any) -> dict[str, Any]:
    """``count`` ``creditwatch worker``s in one group over the published backlog; times, CPU, RSS.

    Timed from the first worker's ready line until every source offset is committed. With
    ``profile_seconds`` the (one) worker runs under py-spy that long instead. ``sample(seconds, workers)``
    is called about once a second while the backlog is consumed. Clock ticks are off unless ``extra`` sets
    ``CREDITWATCH_TICK_INTERVAL_MS``.
    """
    from tests.worker_harness import settings_of

    group = group or f"{prefix}{tag}-{uuid.uuid4().hex[:6]}"
    ports = [free_port() for _ in range(count)]
    envs = []
    for n, port in enumerate(ports):
        env = bench_env(broker, folder, prefix, tag, CREDITWATCH_HEALTH_PORT=port,
                        **{"CREDITWATCH_TICK_INTERVAL_MS": NO_TICKS_MS, **extra})
        env["CREDITWATCH_CONSUMER_GROUP"] = group
        if count > 1 and "CREDITWATCH_DATABASE_URL" not in extra:  # one store for the group
            env["CREDITWATCH_DATABASE_URL"] = f"sqlite:///{folder / group}.db"
        envs.append(env)
    settings = settings_of(envs[0])
    ends = end_offsets_of(settings)
    load_before = load_average()
    workers = []
    try:
        for n, env in enumerate(envs):
            # One migration, then the workers start together.
            workers.append(start_worker(env, folder, f"{tag}{n + 1}" if count > 1 else tag, migrate=n == 0))
        startups = [worker.wait_ready(timeout=ready_timeout) for worker in workers]
        began = min(worker.started_at + startup for worker, startup in zip(workers, startups))
        cpu0 = {worker.pid: cpu_seconds(worker.pid) for worker in workers}
        children0 = {worker.pid: children_cpu(worker.pid) for worker in workers}
        profiler = None
        if profile_seconds:
            profiler = start_profile(workers[0].pid, folder / f"{tag}.pyspy", profile_seconds)
        processed_at = None
        peak_rss = 0
        deadline = time.monotonic() + timeout
        next_sample = time.monotonic()
        while True:
            peak_rss = max(peak_rss, sum(rss_bytes(worker.pid) for worker in workers))
            if sample is not None and time.monotonic() >= next_sample:
                sample(time.monotonic() - began, workers, ports)
                next_sample += 1.0
            if sum(handled(metrics(port)) for port in ports) >= total:
                processed_at = time.monotonic()
                break
            for worker in workers:
                if not worker.alive():
                    raise RuntimeError(f"{worker.name} died; stderr:\n{worker.stderr_tail()}")
            if profiler is not None and profiler.poll() is not None:
                break  # profiled run: enough samples
            if time.monotonic() > deadline:
                done = sum(handled(metrics(port)) for port in ports)
                raise RuntimeError(f"{tag}: {done:.0f} of {total} events within {timeout:g}s")
            time.sleep(0.5)  # each /metrics render takes the worker's GIL
        if profiler is not None:
            profiler.wait(timeout=profile_seconds + 60)
            return {"profile": folder / f"{tag}.pyspy", "startup": startups[0]}
        committed_at = wait_committed(settings.bootstrap_servers, group, ends, workers, timeout)
        cpu = sum(cpu_seconds(worker.pid) - cpu0[worker.pid] for worker in workers)
        children = sum(children_cpu(worker.pid) - children0[worker.pid] for worker in workers)
        alerts = sum(metrics(port).get("creditwatch_alerts_total", 0) for port in ports)
        return {
            "events": total, "startup": max(startups), "processed_s": processed_at - began,
            "committed_s": committed_at - began, "cpu": cpu, "children_cpu": children, "rss": peak_rss, "load": load_before,
            "load_after": load_average(), "alerts": alerts, "rate": total / (committed_at - began),
            "ready_spread": max(w.started_at + r for w, r in zip(workers, startups)) - began,
            "handled_by": [handled(metrics(port)) for port in ports],
        }
    finally:
        for worker in workers:
            worker.terminate()


# --- profiling -----------------------------------------------------------------------------------


def start_profile(pid: int, out: Path, seconds: float, extra_args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """``py-spy record`` of a process (raw collapsed stacks, all threads, GIL holders and idle excluded)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
         "--format", "raw", "--output", str(out), "--nonblocking", *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


#: Where a sample's time is charged: the first frame, from the innermost outwards, holding one of the strings.
CATEGORIES = [
    ("waiting in select/poll or on a lock (py-spy cannot always tell idle threads on a busy machine)",
     ("EpollSelector.select ", "_PollLikeSelector.select ", "Condition.wait ", "Event.wait ", "lock.acquire")),
    ("store: `AlertStore.record` (alerts, outbox rows, positions, snapshots, events; SQLAlchemy + SQLite)",
     ("AlertStore.record ",)),
    ("store payload: positions and snapshots computed for the store (`_store_payload`)", ("_store_payload ",)),
    ("outbox delivery (claim, send to Kafka alert topic and console, `mark_delivered`)", ("OutboxDeliverer",)),
    ("other store reads on timers (reviewer verdicts, delivery gauges, thresholds)",
     ("follow_verdicts", "refresh_gauges", "follow_threshold_changes", "delivery_counts")),
    ("JSON: encode the customer record (Table value)", ("encode_record ",)),
    ("JSON: decode a customer record", ("decode_record ",)),
    ("parse_event (JSON decode + validation)", ("parse_event ",)),
    ("engine: ledger, detectors, models (`on_event`)", ("on_event ", "next_wake ", "on_tick ")),
    ("/metrics and observe_batch (prometheus)", ("observe_batch ", "do_GET ", "prometheus_client/")),
    ("faust Table writes + changelog send", ("faust/tables/", "faust/stores/", "send_changelog ")),
    ("faust streams/agents (stream iterator, take buffer, acks)",
     ("faust/streams.py", "faust/agents/", "faust/events.py", "faust/transport/consumer.py",
      "faust/transport/conductor.py")),
    ("Kafka clients: aiokafka fetch/produce, kafka-python (consumer thread incl. its poll loop)",
     ("aiokafka/", "faust/transport/drivers/", "kafka/", "ServiceThread")),
    ("faust/mode other (timers, services)", ("faust/", "mode/")),
    ("asyncio event loop, threads", ("asyncio/", "threading.py", "concurrent/", "selectors.py", "socketserver.py")),
]


def summarize_profile(path: Path, top: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """(share by category, share by leaf function, samples) of a py-spy raw (collapsed stacks) file."""
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith("process"):
            frames = frames[1:]
        if frames and frames[0].startswith("thread"):
            frames = frames[1:]
        total += count
        leaf = frames[-1] if frames else "?"
        by_leaf[_short_frame(leaf)] += count
        category = "other"
        for frame in reversed(frames):
            hit = next((name for name, needles in CATEGORIES if any(needle in frame for needle in needles)), None)
            if hit:
                category = hit
                break
        by_category[category] += count
    share = lambda counter: [(name, count / total) for name, count in counter.most_common(top)]  # noqa: E731
    return (share(by_category) if total else [], share(by_leaf) if total else [], total)


def _short_frame(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py:12)``."""
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    func, where = match.groups()
    where = re.sub(r".*site-packages/", "", where)
    where = re.sub(r".*/lib/python3\.\d+/", "", where)
    where = re.sub(r"^/work/main/", "", where)
    return f"`{func}` ({where})"


# --- in-process consumers ------------------------------------------------------------------------


async def _consumer(settings: Any) -> Any:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=settings.fetch_max_wait_ms)
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for topic in settings.input_topics for p in range(settings.partitions)])
    await consumer.seek_to_beginning()
    return consumer


async def _read(settings: Any, total: int, handle: Any = None) -> dict[str, Any]:
    from streams.processor import Record

    consumer = await _consumer(settings)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        seen = 0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.batch_max)
            messages = [m for part in batches.values() for m in part]
            seen += len(messages)
            if handle is not None and messages:
                await handle([Record(m.topic, m.partition, m.offset, m.key, m.value) for m in messages])
        return {"events": seen, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    finally:
        await consumer.stop()


def raw_consumer(settings: Any, total: int) -> dict[str, Any]:
    return asyncio.run(_read(settings, total))


def framework_free(settings: Any, total: int, with_store: bool, database_url: str | None = None) -> dict[str, Any]:
    """(ii) or, ``with_store``, (ii+): the worker's per-batch code without faust."""
    from detectors.config import Thresholds
    from pipeline.clock import SystemClock
    from sinks.base import MemorySink
    from streams.processor import BatchProcessor, StateCache
    from streams.runtime import WorkerRuntime

    clock = SystemClock()
    store = None
    if with_store:
        from sinks.store import AlertStore, upgrade_database

        upgrade_database(database_url)
        store = AlertStore(database_url)
    sink = MemorySink()
    # Outbox rows are written for the sinks the worker has (Kafka alert topic, console); not delivered here.
    runtime = WorkerRuntime(settings, Thresholds(), store, {"kafka": sink, "console": sink}, clock=clock)
    table: dict[str, bytes] = {}
    cache = StateCache(lambda customer_id: table.get(customer_id))
    topic_kinds = {settings.topic(kind): kind for kind in ("invoices", "payments", "customers")}
    processor = BatchProcessor(cache, runtime.engine, topic_kinds, clock)
    counts = {"alerts": 0, "dead": 0}

    async def handle(records: list[Any]) -> None:
        now = clock.now()
        result = processor.process(records, now)
        counts["alerts"] += len(result.updates)
        counts["dead"] += len(result.dead_letters)
        if with_store:
            runtime.schedule(result.states.values(), now.date())
            stored = await runtime.persist(result.updates, result.states, now, result.applied)
            table.update(stored.values)
        else:
            for update in result.updates:
                sink.deliver(update)

    try:
        outcome = asyncio.run(_read(settings, total, handle))
    finally:
        if store is not None:
            store.close()
    outcome.update(counts)
    return outcome


# --- the benchmark -----------------------------------------------------------------------------


def _row(name: str, result: dict[str, Any], reference: float | None) -> str:
    rate = result["events"] / result["wall"]
    per_cpu = result["events"] / result["cpu"] if result.get("cpu") else 0
    share = f"{rate / reference:.2f}" if reference else "—"
    return (f"| {name} | {result['events']:,} | {result['wall']:.1f} | {rate:,.0f} | {result.get('cpu', 0):.1f} | "
            f"{per_cpu:,.0f} | {share} | {result.get('load', '')} |")


def run(quick: bool = False) -> str:
    from tests.worker_harness import settings_of

    limit = 5_000 if quick else EVENTS
    lines = stream(limit=limit)
    total = len(lines)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with bench_broker() as broker, scratch("throughput") as folder:
        prefix = new_prefix()
        base = settings_of(bench_env(broker, folder, prefix, "publisher"))
        t = time.perf_counter()
        by_topic = publish_lines(base, lines)
        publish_s = time.perf_counter() - t

        results: dict[str, dict[str, Any]] = {}
        results["raw"] = {**raw_consumer(base, total), "load": load_average()}
        results["free+store"] = {
            **framework_free(base, total, with_store=True, database_url=f"sqlite:///{folder / 'free.db'}"),
            "load": load_average(),
        }
        rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
        pinned_rounds: list[dict[str, Any]] = []
        cpus = sorted(os.sched_getaffinity(0))
        pinning = {"CREDITWATCH_WORKER_CPUS": str(cpus[0]),
                   "CREDITWATCH_CHILD_CPUS": ",".join(map(str, cpus[1:]))} if len(cpus) > 1 else None
        for _ in range(1 if quick else ROUNDS):
            free = {**framework_free(base, total, with_store=False), "load": load_average()}
            worker = run_worker(broker, folder, prefix, total)
            worker.update(wall=worker["committed_s"], load=worker["load_after"])
            rounds.append((free, worker))
            if pinning is not None:
                pinned = run_worker(broker, folder, prefix, total, tag="pinned", **pinning)
                pinned.update(wall=pinned["committed_s"], load=pinned["load_after"])
                pinned_rounds.append(pinned)
        profile = None
        if not quick:
            profiled = run_worker(broker, folder, prefix, total, tag="profiled", profile_seconds=45)
            profile = summarize_profile(profiled["profile"])
            keep = ROOT / ".bench" / "worker_throughput.pyspy.txt"  # the raw stacks, for a flame graph
            keep.parent.mkdir(exist_ok=True)
            shutil.copyfile(profiled["profile"], keep)

    free_rates = [free["events"] / free["wall"] for free, _ in rounds]
    worker_rates = [worker["rate"] for _, worker in rounds]
    shares = [w / f for f, w in zip(free_rates, worker_rates)]
    free_rate, worker_rate, share = statistics.median(free_rates), statistics.median(worker_rates), statistics.median(shares)
    worker = sorted((w for _, w in rounds), key=lambda w: w["rate"])[len(rounds) // 2]  # the median round's worker
    round_rows = []
    for n, ((free, one), rate) in enumerate(zip(rounds, free_rates), 1):
        round_rows += [
            _row(f"(ii) aiokafka `getmany` + `BatchProcessor` (parse, engine), alerts into a memory sink; round {n} "
                 f"({free['alerts']:,} alerts)", free, rate),
            _row(f"**(iii) `creditwatch worker`**, round {n} ({one['alerts']:,.0f} alert updates)", one, rate),
        ]
        if pinned_rounds:
            pinned = pinned_rounds[n - 1]
            round_rows.append(_row(
                f"(iii-p) the worker with `CREDITWATCH_WORKER_CPUS={pinning['CREDITWATCH_WORKER_CPUS']}`, "
                f"`CREDITWATCH_CHILD_CPUS={pinning['CREDITWATCH_CHILD_CPUS']}`, round {n} "
                f"({pinned['alerts']:,.0f} alert updates)", pinned, rate))
    pinned_summary = []
    if pinned_rounds:
        pinned_rates = [p["rate"] for p in pinned_rounds]
        pinned_shares = [p / f for f, p in zip(free_rates, pinned_rates)]
        pinned_rate, pinned_share = statistics.median(pinned_rates), statistics.median(pinned_shares)
        pinned_summary = [
            "",
            f"With the worker pinned to one CPU and its children to the other (iii-p; an operator's setting, "
            f"`streams/affinity.py`, not the default): median {pinned_rate:,.0f} events/s, × (ii) {pinned_share:.2f} "
            f"(rounds: {', '.join(f'{x:.2f}' for x in pinned_shares)}); against the default worker of the same "
            f"rounds: {statistics.median(p / w for p, w in zip(pinned_rates, worker_rates)):.2f}×. On the goals: "
            f"≥ 0.5 × (ii) {'met' if pinned_share >= GOAL_SHARE else 'not met'}, ≥ {GOAL_RATE:,} events/s "
            f"{'met' if pinned_rate >= GOAL_RATE else 'not met'}.",
        ]
    lines_out = [
        "## Worker throughput (embedded broker)",
        "",
        f"Measured {started} by `benchmarks/worker_throughput.py`. Stream: the first {total:,} events of "
        f"`simulate(customers={CUSTOMERS:,}, days={DAYS}, seed=1)` (a year of history per customer), published once "
        f"to 3 topics × 8 partitions of one embedded Tansu broker ({', '.join(f'{k}: {v:,}' for k, v in sorted(by_topic.items()))}; "
        f"{publish_s:.0f} s to publish), then read by each consumer below, one after the other in this run, "
        f"each from the beginning; (ii) and (iii) take turns for {len(rounds)} round(s), each (iii) row's × (ii) is "
        "against the (ii) just before it (the three topics reach each consumer in its own interleaving, which "
        "changes the engine's work: see the alert counts). Default thresholds, all detectors and models; clock ticks off "
        f"(a per-customer-day cost, see the backtest section). Machine: {machine()}; load average when each "
        "finished is in the table (2 shared cores: other work ran at the same time).",
        "",
        "| consumer | events | wall s | events/s | CPU s (this process) | events per CPU s | × (ii) | load average |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        _row("(i) raw aiokafka consumer, reads only", results["raw"], free_rate),
        _row("(ii+) (ii) + record encoding + `WorkerRuntime.persist` to SQLite (alerts, outbox, positions, snapshots, "
             "events)", results["free+store"], free_rate),
        *round_rows,
        "",
        "(i) and (ii+): × the median (ii); (iii-p): × the (ii) of its round. (iii) is the `creditwatch worker` "
        "(faust, changelog, SQLite store; the store writer and the outbox relay in child processes, whose CPU is "
        "not in its row: see below), timed from its "
        "ready line until all offsets are committed.",
        "",
        f"Medians of the {len(rounds)} round(s): (ii) {free_rate:,.0f} events/s, worker {worker_rate:,.0f} events/s, "
        f"worker × (ii) {share:.2f} (rounds: {', '.join(f'{x:.2f}' for x in shares)}). The median worker round: "
        f"start-up (process start → ready line; migrations ran before): {worker['startup']:.1f} s, not counted. "
        f"First → last event processed (/metrics): {worker['processed_s']:.1f} s; all offsets committed after "
        f"{worker['committed_s']:.1f} s. CPU of the worker's child processes (store writer, outbox relay) meanwhile: "
        f"{worker['children_cpu']:.1f} s, so {worker['events'] / (worker['cpu'] + worker['children_cpu']):,.0f} events "
        f"per CPU s of the three. Peak RSS of the worker: {worker['rss'] / 2**20:.0f} MiB.",
        "",
        f"Goals, on the medians: worker ≥ 0.5 × (ii): **{share:.2f}** "
        f"({'met' if share >= GOAL_SHARE else 'not met'}); worker ≥ {GOAL_RATE:,} events/s: "
        f"**{worker_rate:,.0f}** ({'met' if worker_rate >= GOAL_RATE else 'not met'}).",
        *pinned_summary,
    ]
    if profile is not None:
        categories, leaves, samples = profile
        lines_out += [
            "",
            "### Where the worker's time goes (py-spy)",
            "",
            f"A second worker (fresh consumer group, same backlog) under `py-spy record --rate 50 --nonblocking` for "
            f"45 s of consumption: {samples:,} samples of busy threads (idle excluded). Each sample is charged to the "
            "first category found walking from the innermost frame outwards.",
            "",
            "| where | share of samples |",
            "| --- | ---: |",
            *[f"| {name} | {share:.1%} |" for name, share in categories],
            "",
            "Innermost functions (own time):",
            "",
            "| function | share |",
            "| --- | ---: |",
            *[f"| {name} | {share:.1%} |" for name, share in leaves],
        ]
    return "\n".join(lines_out)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
