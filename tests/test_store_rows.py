"""The store's positions and snapshots (``streams.runtime.store_rows``), computed by the store writer.

The worker hands the store writer each touched customer's record bytes, its
ledger revision and the batch's events; the writer computes the position
from its own copy of the ledger brought up to date with the events when the
revision matches, or else from the decoded bytes, off the worker's GIL.
These tests pin that the result is the position of the live record either
way, and that the daily risk snapshot is marked in the bytes the Table gets.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from detectors.config import Thresholds
from pipeline.config import Settings
from pipeline.ledger import position
from streams.runtime import LedgerReplicas, WorkerRuntime, store_rows
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


# --- the store writer's own copies of the ledgers --------------------------------------


def _batches(count: int = 6):
    """The simulated portfolio's events in ``count`` batches, each with the records it touched (as the worker
    has them after the batch, and changed in place by the next one) and the events it applied."""
    from tests.test_codec import engine, simulated_events

    risk = engine()
    events = sorted(simulated_events(customers=12, days=300, seed=11), key=lambda e: e.occurred_at)
    size = len(events) // count + 1
    records: dict[str, Any] = {}
    for start in range(0, len(events), size):
        touched, applied = {}, []
        for event in events[start:start + size]:
            before = records.get(event.customer_id)
            if before is not None and before.ledger.has_seen(event.event_id):
                continue
            records[event.customer_id], _ = risk.on_event(before, event, event.occurred_at)
            touched[event.customer_id] = records[event.customer_id]
            applied.append(event)
        yield touched, applied, events[start + size - 1].occurred_at if start + size <= len(events) else events[-1].occurred_at


def _expected(runtime: WorkerRuntime, records: dict[str, Any], now: datetime) -> dict[str, Any]:
    expected = {}
    for customer_id, record in records.items():
        want = position(record.ledger, now.date(), runtime.settings.ledger).to_json()
        want["risk_score"] = runtime._risk_score(record)
        expected[customer_id] = want
    return expected


def test_positions_from_the_store_writers_own_ledgers_equal_the_live_records_positions(runtime):
    replicas = LedgerReplicas()
    for touched, applied, now in _batches():
        runtime.schedule(touched.values(), now.date())
        prepared = runtime.prepare([], touched, now)
        positions, _ = store_rows(prepared.jobs, prepared.now, runtime.settings.ledger, applied, replicas)
        assert positions == _expected(runtime, touched, now)
    # Every customer was decoded once, when first seen; after that its copy followed the events.
    assert replicas.decoded == len(replicas._states) == 12
    assert replicas.hits > 3 * replicas.decoded


def test_a_ledger_copy_that_missed_a_batch_is_not_used_and_the_record_bytes_are_decoded_instead(runtime):
    replicas = LedgerReplicas()
    skipped = set()
    for number, (touched, applied, now) in enumerate(_batches()):  # one at a time: the records change in place
        runtime.schedule(touched.values(), now.date())
        prepared = runtime.prepare([], touched, now)
        if number == 2:
            skipped = set(touched)  # as if this batch had been stored by another worker's writer
            continue
        decoded_before = replicas.decoded
        positions, _ = store_rows(prepared.jobs, prepared.now, runtime.settings.ledger, applied, replicas)
        assert positions == _expected(runtime, touched, now)
        if number == 3:
            stale = skipped & set(touched) & set(replicas._states)
            assert stale, "the batch after the skipped one should touch some of its customers"
            assert replicas.decoded - decoded_before >= len(stale)


def test_the_ledger_copies_are_bounded_and_drop_the_least_recently_used(runtime):
    replicas = LedgerReplicas(capacity=4)
    for touched, applied, now in _batches():
        runtime.schedule(touched.values(), now.date())
        prepared = runtime.prepare([], touched, now)
        positions, _ = store_rows(prepared.jobs, prepared.now, runtime.settings.ledger, applied, replicas)
        assert positions == _expected(runtime, touched, now)
        assert len(replicas._states) <= 4
        assert list(replicas._states)[-1] == prepared.jobs[-1].customer_id


def test_the_store_writer_child_freezes_its_long_lived_ledger_copies_after_each_batch(runtime, tmp_path):
    # Its full collections walked every ledger copy: 0.1-0.25 s every few seconds, with a batch waiting.
    import asyncio
    import gc

    from sinks.store import AlertStore, upgrade_database
    from streams.store_writer import StoreWriter

    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_database(url)
    writer = StoreWriter(url, runtime.settings.ledger, replicas=100, gc_full_interval_s=600)
    try:
        assert writer._pool.submit(gc.get_freeze_count).result() == 0  # a fresh child: nothing frozen yet
        touched, applied, now = next(iter(_batches()))
        runtime.schedule(touched.values(), now.date())
        prepared = runtime.prepare([], touched, now)
        asyncio.run(writer.record(writer.ticket(), [], [], prepared.jobs, prepared.now, applied))
        assert writer._pool.submit(gc.get_freeze_count).result() > 0
    finally:
        writer.close()
    store = AlertStore(url)
    try:
        assert all(store.get_position(customer_id) is not None for customer_id in touched)  # and it was stored
    finally:
        store.close()


def test_the_alerted_customers_feedback_features_from_the_few_fields_equal_those_from_the_whole_position(
        runtime, simulated_records):  # noqa: F811
    # prepare() hands the reviewer-feedback model only the position fields it reads (POSITION_FIELDS), not the
    # whole position with every open invoice written out: the features must not change.
    from pipeline.feedback import FeedbackModel
    from streams.runtime import FEEDBACK_FIELDS, position_row

    features = FeedbackModel.features
    alert = {"detector": "overdue", "severity": "warning", "score": 0.7}
    seen_figures: set[str] = set()
    for record in simulated_records.values():
        for day in (NOW.date(), NOW.date() + timedelta(days=90)):
            full = position_row(record.ledger, day, runtime.settings.ledger, 0.31)
            few = position_row(record.ledger, day, runtime.settings.ledger, 0.31, FEEDBACK_FIELDS)
            assert features(alert, few) == features(alert, full)
            seen_figures |= set(features(alert, full))
    # the sample exercises the figures that come from the position
    assert {"utilisation", "overdue_share", "dso", "days_beyond_terms", "risk"} <= seen_figures
