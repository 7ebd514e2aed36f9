"""The store's positions and snapshots, computed from the records' Table bytes (``streams.runtime.store_rows``).

The worker hands the store writer each touched customer's record bytes; the
writer decodes them and computes the position there, off the worker's GIL.
These tests pin that the result is the position of the live record, and that
the daily risk snapshot is marked in the bytes the Table gets.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from detectors.config import Thresholds
from pipeline.config import Settings
from pipeline.ledger import position
from streams.runtime import WorkerRuntime, store_rows
from tests.test_codec import simulated_records  # noqa: F401 - fixture

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def runtime() -> WorkerRuntime:
    return WorkerRuntime(Settings(), Thresholds(), store=None, sinks={})


def test_positions_from_the_table_bytes_equal_the_live_records_positions(runtime, simulated_records):  # noqa: F811
    from pipeline.engine import decode_record, encode_record

    # Copies: the fixture is shared with other tests, and prepare marks the day's snapshot in each record.
    records = {c: decode_record(encode_record(r)) for c, r in list(simulated_records.items())[:60]}
    for record in records.values():
        record.risk.memory.pop("_snapshot", None)
    runtime.schedule(records.values(), NOW.date())
    prepared = runtime.prepare([], records, NOW)
    positions, snapshots = store_rows(prepared.jobs, prepared.now, runtime.settings.ledger)
    assert set(positions) == set(records)
    for customer_id, record in records.items():
        want = position(record.ledger, NOW.date(), runtime.settings.ledger).to_json()
        want["risk_score"] = runtime._risk_score(record)
        assert positions[customer_id] == want, customer_id
    assert any(p["open_invoices"] for p in positions.values()), "the sample should have open invoices"
    assert sorted(s.customer_id for s in snapshots) == sorted(records)
    assert {s.taken_at for s in snapshots} == {NOW}


def test_the_days_risk_snapshot_is_taken_once_and_the_table_bytes_remember_it(runtime, simulated_records):  # noqa: F811
    from pipeline.engine import decode_record, encode_record

    customer_id, shared = next(iter(simulated_records.items()))
    record = decode_record(encode_record(shared))  # a copy: the fixture is shared with other tests
    record.risk.memory.pop("_snapshot", None)
    first = runtime.prepare([], {customer_id: record}, NOW)
    assert [job.snapshot for job in first.jobs] == [True]
    # The bytes the Table gets already say today's snapshot is taken: a worker restarted from them takes no second.
    restored = decode_record(first.values[customer_id])
    again = runtime.prepare([], {customer_id: restored}, NOW + timedelta(hours=3))
    assert [job.snapshot for job in again.jobs] == [False]
    _, snapshots = store_rows(again.jobs, again.now, runtime.settings.ledger)
    assert snapshots == []
    tomorrow = runtime.prepare([], {customer_id: restored}, NOW + timedelta(days=1))
    assert [job.snapshot for job in tomorrow.jobs] == [True]
