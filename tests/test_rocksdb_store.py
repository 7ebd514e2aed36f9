"""``CREDITWATCH_STORE=rocksdb://``: the worker keeps its customers Table in RocksDB and recovers it.

A worker on the RocksDB store (faust's ``rocksdb://`` through the rocksdict
package) processes half of a stream, is SIGKILLed, and a new worker on the
same data directory processes the rest; a third of the customers are published
to a partition other than Kafka's default one for their key. The changelog must equal the offline
ledger for all events (the second half builds on the first: payments of
invoices the killed worker saw), and the RocksDB files left behind must hold
every customer's record, byte for byte the last record of the changelog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.app import changelog_topic_name
from tests.test_worker import canonical_all, generated_events, offline
from tests.worker_harness import (
    as_records,
    cli_env,
    committed_offsets,
    end_offsets,
    publish,
    read_topic,
    settings_of,
    wait_for_changelog_state,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def rocksdb_tables(data_dir: Path) -> list[Path]:
    return sorted(path for path in (data_dir / "faust").rglob("customers-*.db") if path.is_dir())


def read_rocksdb(paths: list[Path]) -> dict[bytes, bytes]:
    """Every key and value in the partition databases (faust's own offset keys left out)."""
    from rocksdict import AccessType, Options, Rdict

    found: dict[bytes, bytes] = {}
    for path in paths:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if not key.startswith(b"__faust"):
                    found[key] = value
        finally:
            db.close()
    return found


def wait_committed(settings: Any, timeout: float = 60) -> None:
    import time

    ends = end_offsets(settings.bootstrap_servers, settings.input_topics)
    deadline = time.monotonic() + timeout
    while True:
        committed = committed_offsets(settings.bootstrap_servers, settings.consumer_group)
        if all(committed.get(tp, 0) >= end for tp, end in ends.items()):
            return
        assert time.monotonic() < deadline, f"offsets {committed} not committed up to {ends}"
        time.sleep(0.2)


def elsewhere_for_some(key: bytes, partitions: int) -> int:
    """Kafka's default partition for most customers; the next one for every third (a producer with its own
    partitioner: each customer still on one partition of every input topic)."""
    from streams.app import key_partition

    partition = key_partition(key, partitions)
    return (partition + 1) % partitions if sum(key) % 3 == 0 else partition


def test_worker_on_rocksdb_store_recovers_its_state_after_sigkill(broker, unique_prefix, tmp_path, workers):
    data_dir = tmp_path / "data"
    env = cli_env(broker, unique_prefix, f"{unique_prefix}rocks", data_dir, CREDITWATCH_STORE="rocksdb://")
    settings = settings_of(env)
    assert settings.store == "rocksdb://"
    events = generated_events(customers=30, total=600, seed=7, duplicates=0.0)
    half = len(events) // 2
    first_half, second_half = events[:half], events[half:]

    first = workers(env, name="rocks-first")
    first.wait_ready(timeout=60)
    # A read tries the partition Kafka's default partitioner gives the customer first; the customers a
    # producer put elsewhere are found in the others (after the restart, with no index in memory).
    publish(settings.bootstrap_servers, as_records(settings, first_half), partition_of=elsewhere_for_some)
    wait_for_changelog_state(settings, canonical_all(offline(first_half, settings.ledger)), timeout=60, worker=first)
    wait_committed(settings)
    first.kill()
    tables = rocksdb_tables(data_dir)
    assert tables, f"no RocksDB table files under {data_dir / 'faust'}"

    second = workers(env, name="rocks-second")
    second.wait_ready(timeout=60)
    publish(settings.bootstrap_servers, as_records(settings, second_half), partition_of=elsewhere_for_some)
    expected = canonical_all(offline(events, settings.ledger))
    wait_for_changelog_state(settings, expected, timeout=90, worker=second)
    wait_committed(settings)
    second.terminate()

    # The Table lived in RocksDB: its files hold every customer's last changelog record.
    changelog = changelog_topic_name(settings)
    last: dict[bytes, bytes] = {}
    total = sum(end for end in end_offsets(settings.bootstrap_servers, [changelog]).values())
    for record in read_topic(settings.bootstrap_servers, changelog, total):
        last[record.key] = record.value
    stored = read_rocksdb(rocksdb_tables(data_dir))
    assert set(stored) == set(last) == {c.encode() for c in expected}
    differing = [key for key in last if stored[key] != last[key]]
    assert not differing, f"{len(differing)} customers differ between RocksDB and the changelog, e.g. {differing[:3]}"

