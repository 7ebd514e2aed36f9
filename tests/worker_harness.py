"""Run ``creditwatch`` subprocesses against the test broker and watch what they did.

* :func:`cli_env` — a hermetic environment for one test (its own topic prefix,
  consumer group and data directory; no ``CREDITWATCH_*`` leaks from outside).
* :class:`WorkerProcess` — one ``creditwatch worker`` subprocess: start, wait
  for its ready line (with a deadline), SIGKILL/SIGTERM; its stdout and stderr
  go to files (under pytest's ``tmp_path``) so that a failure can show them.
* :func:`wait_for_changelog_state` — poll the changelog (the worker's state,
  read with ``streams.state_reader.read_all_states``) until it equals what a
  test expects, or fail at a deadline saying what still differs.
* Small Kafka helpers: publish records and keep their offsets, read a topic,
  read a group's committed offsets.

Nothing here sleeps to make a point: every wait polls a condition and has a
deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, time as dtime, timedelta, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pipeline.config import Settings, load_settings
from pipeline.ledger import CustomerState, canonical

READY_LINE = "creditwatch worker ready"


def creditwatch_command() -> list[str]:
    """The ``creditwatch`` console script of the running interpreter's environment."""
    script = Path(sys.executable).with_name("creditwatch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def cli_env(broker: Any, prefix: str, group: str, data_dir: Path, **extra: Any) -> dict[str, str]:
    """Environment for ``creditwatch`` subprocesses of one test.

    ``extra`` adds or overrides settings: ``cli_env(..., CREDITWATCH_BATCH_MAX=50)``.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("CREDITWATCH_")}
    env.update(
        CREDITWATCH_BROKER_URL=broker.url,
        CREDITWATCH_TOPIC_PREFIX=prefix,
        CREDITWATCH_CONSUMER_GROUP=group,
        CREDITWATCH_SESSION_TIMEOUT_MS="2000",
        CREDITWATCH_PARTITIONS="8",
        CREDITWATCH_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def settings_of(env: Mapping[str, str]) -> Settings:
    """The settings a subprocess started with ``env`` reads."""
    return load_settings(env)


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``creditwatch ARGS`` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [*creditwatch_command(), *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class WorkerProcess:
    """One ``creditwatch worker`` subprocess whose output goes to files in ``log_dir``."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, name: str = "worker"):
        self.env = dict(env)
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None

    def start(self, migrate: bool = True) -> "WorkerProcess":
        assert self.process is None, f"{self.name} already started"
        if migrate:
            # The worker refuses an outdated alert store; a test's fresh SQLite file needs the schema first.
            subprocess.run([*creditwatch_command(), "db", "upgrade"], env=self.env, check=True,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                [*creditwatch_command(), "worker"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C meant for pytest does not reach it
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines: int = 25) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def is_ready(self) -> bool:
        return READY_LINE in self.stderr_text()

    def wait_ready(self, timeout: float = 30) -> float:
        """Wait for the ready line; return the seconds since start. Fails if the worker dies first."""
        assert self.process is not None and self.started_at is not None, f"{self.name} not started"
        deadline = time.monotonic() + timeout
        while True:
            if self.is_ready():
                if self.ready_after is None:
                    self.ready_after = time.monotonic() - self.started_at
                return self.ready_after
            code = self.process.poll()
            if code is not None:
                raise AssertionError(
                    f"{self.name} exited with status {code} before it was ready; stderr:\n{self.stderr_tail()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} not ready within {timeout:g}s; stderr:\n{self.stderr_tail()}")
            time.sleep(0.02)

    def wait(self, timeout: float = 30) -> int:
        """Wait for the worker to exit by itself; return its status."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:g}s; stderr:\n{self.stderr_tail()}"
            ) from None

    def kill(self) -> int:
        """SIGKILL (no chance to flush or commit anything) and reap it."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM; SIGKILL if it has not stopped after ``timeout`` seconds."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
        return self.process.wait(10)

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


# --- the changelog ---------------------------------------------------------------


def read_states(settings: Settings) -> dict[str, CustomerState]:
    """Every customer's state in the changelog; {} while the changelog does not exist yet."""
    from streams.state_reader import StateUnavailable, read_all_states

    try:
        return read_all_states(settings)
    except StateUnavailable:
        return {}


def wait_for_states(
    settings: Settings,
    done: Callable[[dict[str, CustomerState]], bool],
    timeout: float,
    describe: Callable[[dict[str, CustomerState]], str] = lambda states: f"{len(states)} customers in the changelog",
    worker: WorkerProcess | None = None,
) -> dict[str, CustomerState]:
    """Poll the changelog until ``done(states)``; return those states, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        states = read_states(settings)
        if done(states):
            return states
        if worker is not None and not worker.alive():
            raise AssertionError(
                f"{worker.name} died (status {worker.process.returncode}) while waiting; "  # type: ignore[union-attr]
                f"{describe(states)}; stderr:\n{worker.stderr_tail()}"
            )
        if time.monotonic() >= deadline:
            message = f"changelog not as expected within {timeout:g}s: {describe(states)}"
            if worker is not None:
                message += f"; {worker.name} stderr:\n{worker.stderr_tail()}"
            raise AssertionError(message)
        time.sleep(0.1)


def state_difference(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """One line saying how two {customer_id: view} maps differ."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differing = sorted(c for c in set(expected) & set(actual) if actual[c] != expected[c])
    if not (missing or extra or differing):
        return "equal"
    parts = []
    if missing:
        parts.append(f"{len(missing)} customers missing (e.g. {missing[:3]})")
    if extra:
        parts.append(f"{len(extra)} unexpected customers (e.g. {extra[:3]})")
    if differing:
        parts.append(f"{len(differing)} customers differ (e.g. {differing[:3]})")
    return "; ".join(parts)


def wait_for_changelog_state(
    settings: Settings,
    expected: Mapping[str, Any],
    timeout: float = 60,
    view: Callable[[CustomerState], Any] = canonical,
    worker: WorkerProcess | None = None,
) -> dict[str, CustomerState]:
    """Poll until ``{customer_id: view(state)}`` from the changelog equals ``expected``; return the states."""

    def viewed(states: dict[str, CustomerState]) -> dict[str, Any]:
        return {customer_id: view(state) for customer_id, state in states.items()}

    return wait_for_states(
        settings,
        lambda states: viewed(states) == dict(expected),
        timeout,
        describe=lambda states: state_difference(viewed(states), expected),
        worker=worker,
    )


# --- Kafka helpers ------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def as_records(settings: Settings, events: Iterable[Mapping[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of each event, as ``creditwatch ingest`` publishes them (each parsed, so each is valid)."""
    from pipeline.events import parse_event

    records = []
    for body in events:
        raw = json.dumps(body).encode()
        event = parse_event(raw)
        records.append((settings.topic(event.topic_kind), event.customer_id.encode(), raw))
    return records


def publish(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes]], linger_ms: int = 5,
            partition_of: Callable[[bytes, int], int] | None = None) -> list[Published]:
    """Send (topic, key, value) records in order, acks=all; return where each one landed.

    The topics must exist (``streams.admin.ensure_topics``): the embedded broker
    would auto-create an unknown one with 4 partitions. ``partition_of(key, partition count)``
    picks each record's partition; Kafka's default partitioner (murmur2 of the key) when None.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms, max_in_flight_requests_per_connection=1
    )
    try:
        counts: dict[str, int] = {}
        sent = []
        for topic, key, value in records:
            partition = None
            if partition_of is not None and key is not None:
                if topic not in counts:
                    counts[topic] = len(producer.partitions_for(topic))
                partition = partition_of(key, counts[topic])
            sent.append((topic, key, value, producer.send(topic, key=key, value=value, partition=partition)))
        producer.flush(timeout=30)
        result = []
        for topic, key, value, future in sent:
            meta = future.get(timeout=30)
            result.append(Published(topic, meta.partition, meta.offset, key, value))
        return result
    finally:
        producer.close(timeout=5)


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Any]:
    """Read a topic from the beginning until ``count`` records arrived (fails at the deadline).

    Returns kafka-python ``ConsumerRecord``s (topic, partition, offset, key, value, headers).
    """
    from kafka import KafkaConsumer, TopicPartition

    from streams.admin import partition_counts

    partitions = partition_counts(bootstrap, [topic])[topic]
    assert partitions, f"topic {topic} does not exist"
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < count:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
            if time.monotonic() >= deadline:
                raise AssertionError(f"{topic}: {len(records)} of {count} records within {timeout:g}s")
        return records
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The consumer group's committed offset of each (topic, partition)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="creditwatch-tests")
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """True end offset (Fetch high watermark) of every partition of ``topics``."""
    from streams.admin import high_watermarks

    return {(topic, p): end for topic in topics for p, end in high_watermarks(bootstrap, topic).items()}


# --- a worker's /metrics ------------------------------------------------------------

Metrics = Mapping[str, list[tuple[dict[str, str], float]]]


def scrape_metrics(port: int) -> Metrics:
    """A worker's /metrics: sample name -> [(labels, value)]."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def metric_total(found: Metrics, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for have, value in found.get(name, []) if all(have.get(k) == v for k, v in labels.items()))


# --- a worker's delivery process ------------------------------------------------------


def delivery_children(worker_pid: int) -> list[int]:
    """Live processes whose parent is ``worker_pid`` and which run ``streams.delivery``."""
    return children(worker_pid, b"streams.delivery")


def children(worker_pid: int, marker: bytes = b"") -> list[int]:
    """Live processes whose parent is ``worker_pid`` and whose command line has ``marker`` in one argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == worker_pid and stat[0] != "Z" and any(marker in part for part in command):
            found.append(int(entry.name))
    return found


# --- generated events ---------------------------------------------------------------
# The bodies the generators of tests/test_worker.py and tests/test_multi_worker.py share; each generator draws
# its random figures in its own order and passes them in.


def stamp(day: date, hour: int, minute: int = 0) -> str:
    return datetime.combine(day, dtime(hour % 24, minute), tzinfo=timezone.utc).isoformat()


def registered(customer_id: str, number: int, day: date, credit_limit: int) -> dict[str, Any]:
    return {
        "event_id": f"{customer_id}-reg", "type": "customer.registered", "customer_id": customer_id,
        "occurred_at": stamp(day, 6), "name": f"Customer {number}", "country": "DE",
        "credit_limit": str(credit_limit), "currency": "EUR", "payment_terms_days": 30,
    }  # fmt: skip


def invoice_issued(customer_id: str, n: int, day: date, hour: int, amount: str, currency: str) -> dict[str, Any]:
    """Invoice ``{customer_id}-I{n}`` (event ``{customer_id}-e{n}``), due 30 days after ``day``."""
    return {
        "event_id": f"{customer_id}-e{n}", "type": "invoice.issued", "customer_id": customer_id,
        "occurred_at": stamp(day, hour), "invoice_id": f"{customer_id}-I{n}", "amount": amount,
        "currency": currency, "issued_on": day.isoformat(), "due_on": (day + timedelta(days=30)).isoformat(),
    }  # fmt: skip


def payment_received(customer_id: str, n: int, day: date, hour: int, amount: str) -> dict[str, Any]:
    """Payment ``{customer_id}-P{n}`` in EUR (event ``{customer_id}-e{n}``), naming no invoice."""
    return {
        "event_id": f"{customer_id}-e{n}", "type": "payment.received", "customer_id": customer_id,
        "occurred_at": stamp(day, hour), "payment_id": f"{customer_id}-P{n}", "amount": amount,
        "currency": "EUR", "received_on": day.isoformat(),
    }  # fmt: skip
