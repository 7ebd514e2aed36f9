"""The wake-up day written with each Table record, and the schedule a worker rebuilds from it.

After a rebalance a worker rebuilds its wake-up schedule from the table. With a
million customers, decoding every record would hold the worker for minutes,
so each record carries the wake-up day the worker scheduled when it wrote it
(``pipeline.codec.with_wake``), and the rebuild decodes only the records whose
day has passed or whose rules changed. The schedule must be exactly the one
decoding every record gives.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest

from detectors.config import ModelOptions, Thresholds
from pipeline import codec
from pipeline.config import LedgerConfig, load_settings
from pipeline.engine import CustomerRecord, decode_record, encode_record
from streams.runtime import WorkerRuntime
from tests.test_codec import assert_same_state, simulated_events


def runtime(**settings_env: str) -> WorkerRuntime:
    return WorkerRuntime(load_settings(settings_env), Thresholds(), store=None, sinks={})


@pytest.fixture(scope="module")
def records_by_day() -> list[tuple[date, CustomerRecord]]:
    """(day written, record) of customers at several points of a simulated portfolio (promises, aging, models)."""
    worker = runtime()
    records: dict[str, CustomerRecord] = {}
    taken: list[tuple[date, CustomerRecord]] = []
    events = simulated_events(customers=25, days=400, seed=5)
    for n, event in enumerate(events):
        records[event.customer_id], _ = worker.engine.on_event(records.get(event.customer_id), event,
                                                                event.occurred_at)
        if n % 97 == 0:
            taken.append((event.occurred_at.date(), decode_record(encode_record(records[event.customer_id]))))
    return taken


def test_a_record_behind_a_wake_header_decodes_to_the_same_record():
    worker = runtime()
    event = simulated_events(customers=1, days=30, seed=1)[0]
    record, _ = worker.engine.on_event(None, event, event.occurred_at)
    plain = encode_record(record)
    wrapped = codec.with_wake(plain, 739_000, 739_031, 12345)
    assert wrapped != plain and wrapped.endswith(plain)
    assert codec.wake_of(wrapped) == (739_000, 739_031, 12345)
    assert codec.wake_of(plain) is None
    assert_same_state(decode_record(wrapped).ledger, record.ledger)
    assert decode_record(wrapped).risk.to_json() == record.risk.to_json()
    # a new header replaces the old one
    assert codec.with_wake(wrapped, 739_001, 0, 1) == codec.with_wake(plain, 739_001, 0, 1)


def test_the_day_read_from_the_table_is_the_day_decoding_gives_on_every_later_day(records_by_day):
    worker = runtime()
    skipped = decoded = 0
    for written_on, record in records_by_day:
        worker.schedule([record], written_on)
        raw = worker.table_value(record, written_on)
        wake = worker.wake.due.get(record.customer_id)
        for later in range(0, 200, 3):
            today = written_on + timedelta(days=later)
            day, opened = worker.wake_from_table(raw, today)
            assert day == worker.engine.next_wake(record, today), (record.customer_id, written_on, today)
            # decoded exactly when the day written has come (or there is none left to wait for: never)
            assert opened == (wake is not None and wake <= today)
            skipped += not opened
            decoded += opened
    assert skipped and decoded  # both paths taken


def test_a_record_is_decoded_when_the_clock_went_back_the_rules_changed_or_it_has_no_header(records_by_day):
    worker = runtime()
    written_on, record = next((d, r) for d, r in records_by_day if worker.engine.next_wake(r, d) is not None)
    worker.schedule([record], written_on)
    raw = worker.table_value(record, written_on)
    assert worker.wake_from_table(raw, written_on)[1] is False

    earlier = written_on - timedelta(days=40)
    assert worker.wake_from_table(raw, earlier) == (worker.engine.next_wake(record, earlier), True)

    other = WorkerRuntime(load_settings({}), replace(Thresholds(), models=ModelOptions(late_days=5)), store=None,
                          sinks={})
    assert other.wake_key != worker.wake_key
    assert other.wake_from_table(raw, written_on) == (other.engine.next_wake(record, written_on), True)

    graced = WorkerRuntime(replace(load_settings({}), ledger=LedgerConfig(promise_grace_days=3)), Thresholds(),
                           store=None, sinks={})
    assert graced.wake_key != worker.wake_key

    plain = encode_record(record)
    assert worker.wake_from_table(plain, written_on) == (worker.engine.next_wake(record, written_on), True)


# --- a worker restored from the changelog wakes its customers ------------------------------------------


@pytest.mark.broker
@pytest.mark.slow
def test_a_customer_restored_from_the_changelog_is_woken_by_the_clock_after_a_restart(
        broker, unique_prefix, tmp_path, workers):
    """The second worker reads the record from the changelog, schedules it from its header, and ticks it."""
    from streams.broker import free_port
    from tests.worker_harness import (
        as_records, cli_env, invoice_issued, metric_total, publish, registered, scrape_metrics, settings_of,
        wait_for_changelog_state,
    )
    from tests.test_worker import canonical_all, offline

    today = datetime.now(timezone.utc).date()
    issued = today - timedelta(days=29)  # due tomorrow: the first aging step (and the models' overdue day) after it
    events = [registered("W1", 1, issued, 50_000), invoice_issued("W1", 1, issued, 9, "1200.00", "EUR")]
    first_env = cli_env(broker, unique_prefix, f"{unique_prefix}wake", tmp_path / "first",
                        CREDITWATCH_TICK_INTERVAL_MS="200")
    settings = settings_of(first_env)
    first = workers(first_env, name="wake-first")
    first.wait_ready(timeout=60)
    publish(settings.bootstrap_servers, as_records(settings, events))
    wait_for_changelog_state(settings, canonical_all(offline(events, settings.ledger)), timeout=60, worker=first)
    first.terminate()

    # The second worker (a fresh data directory: everything comes from the changelog) runs its clock at an hour
    # a second from now: the wake-up day, at least 24 hours away, comes while it runs, after its first tick.
    port = free_port()
    second_env = {**first_env, "CREDITWATCH_DATA_DIR": str(tmp_path / "second"),
                  "CREDITWATCH_CLOCK_ANCHOR": datetime.now(timezone.utc).isoformat(), "CREDITWATCH_CLOCK_SPEED": "3600",
                  "CREDITWATCH_HEALTH_PORT": str(port)}
    second = workers(second_env, name="wake-second")
    second.wait_ready(timeout=60)
    deadline = time.monotonic() + 120
    while True:
        found = scrape_metrics(port)
        if metric_total(found, "creditwatch_clock_ticks_total") >= 1:
            break
        assert time.monotonic() < deadline, f"the restored customer was not woken; stderr:\n{second.stderr_tail()}"
        time.sleep(0.5)
    assert metric_total(found, "creditwatch_wake_rebuild_records_total") >= 1
    # Scheduled from the header the first worker wrote: nothing decoded.
    assert metric_total(found, "creditwatch_wake_rebuild_decoded_total") == 0
