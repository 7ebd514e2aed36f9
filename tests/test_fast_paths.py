"""The shortcuts of the hot path agree with the slow reference, event by event.

* the ledger's kept allocation (``_Book``) against ``_allocate`` from the facts,
  and positions built from it against ``position_reference``;
* compaction with the book against compaction from the facts (same retired
  invoices and payments, same lifetime aggregates, same state);
* the whole engine with every shortcut on against the engine with the ledger's
  shortcuts off (same alerts, revisions and model state).
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal

import pytest

import pipeline.ledger as ledger
from pipeline.config import LedgerConfig
from pipeline.ledger import _allocate, allocate, apply, canonical, new_state, position, position_reference
from tests.test_models import random_portfolio

CONFIG = LedgerConfig(fx_rates={"EUR": Decimal(1), "USD": Decimal("0.92"), "GBP": Decimal("1.17")})
SHORT = LedgerConfig(fx_rates=dict(CONFIG.fx_rates), retention_days=30)


def _alloc_json(alloc):
    return {
        "invoices": [
            (v.invoice_id, v.issued_on, v.due_on, v.currency, v.amount, v.due_base, v.outstanding_base, v.settled_on,
             v.amount_base, v.adjusted_base, v.credited_base, v.written_off_base)
            for v in alloc.invoices
        ],
        "applied": alloc.applied_base,
        "unapplied": alloc.unapplied_base,
        "held": alloc.held_payments,
        "allocations": {source: parts for source, parts in alloc.allocations.items()},
        "close_dates": alloc.close_dates,
    }


def _check(state, config, days):
    assert _alloc_json(allocate(state, config)) == _alloc_json(_allocate(state, config))
    for day in days:
        assert position(state, day, config) == position_reference(state, day, config)


def _days(events):
    first = min(e.occurred_at.date() for e in events)
    last = max(e.occurred_at.date() for e in events)
    return [first, first + (last - first) / 2, last, last + timedelta(days=45), last + timedelta(days=200)]


@pytest.mark.parametrize("seed", range(40))
def test_kept_allocation_and_positions_agree_with_the_reference_after_every_event(seed):
    events = random_portfolio(seed, n_events=120)
    if seed % 2:  # out of order too: payments before invoices, reversals before payments
        random.Random(seed).shuffle(events)
    state = new_state("C1")
    days = _days(events)
    for event in events:
        try:
            apply(state, event, CONFIG)
        except ledger.LedgerRejected:
            continue
        _check(state, CONFIG, days[1:3])
    _check(state, CONFIG, days)


def _simulated(customers, days, seed):
    from pipeline.events import validate_event
    from pipeline.simulate import simulate

    return [validate_event(e) for e in simulate(customers=customers, days=days, seed=seed, default_share=0.2)]


def test_simulated_portfolio_agrees_with_the_reference():
    events = _simulated(40, 400, 3)
    states: dict[str, ledger.CustomerState] = {}
    for n, event in enumerate(events):
        state = states.setdefault(event.customer_id, new_state(event.customer_id))
        apply(state, event, ledger.DEFAULT_CONFIG)
        if n % 7 == 0:
            _check(state, ledger.DEFAULT_CONFIG, [event.occurred_at.date()])
    end = max(e.occurred_at.date() for e in events)
    for state in states.values():
        _check(state, ledger.DEFAULT_CONFIG, [end, end + timedelta(days=30)])


def _run_both(events, config, monkeypatch):
    """Apply the events to two states, one with the shortcuts and one without; compare after each."""
    fast, slow = new_state(events[0].customer_id), new_state(events[0].customer_id)
    probe = events[len(events) // 2].occurred_at.date()
    for event in events:
        monkeypatch.setattr(ledger, "INCREMENTAL", False)
        try:
            apply(slow, event, config)
        except ledger.LedgerRejected:
            pass
        assert slow.book is None
        monkeypatch.setattr(ledger, "INCREMENTAL", True)
        try:
            apply(fast, event, config)
        except ledger.LedgerRejected:
            pass
        assert canonical(fast) == canonical(slow)
        assert fast.lifetime == slow.lifetime
        day = event.occurred_at.date()
        assert position(fast, day, config) == position_reference(slow, day, config)
    assert position(fast, probe, config) == position_reference(slow, probe, config)
    return fast, slow


@pytest.mark.parametrize("seed", range(30))
def test_compaction_with_the_book_retires_exactly_what_the_reference_retires(seed, monkeypatch):
    monkeypatch.setattr(ledger, "COMPACT_ABOVE", 4)
    events = random_portfolio(seed, n_events=260)
    if seed % 3 == 0:
        random.Random(seed).shuffle(events)
    fast, _ = _run_both(events, SHORT, monkeypatch)
    assert fast.lifetime.invoices > 0 or seed % 3 == 0


def test_compaction_on_a_long_simulated_history(monkeypatch):
    events = _simulated(12, 500, 5)
    by_customer: dict[str, list] = {}
    for event in events:
        by_customer.setdefault(event.customer_id, []).append(event)
    retired = 0
    for customer_events in by_customer.values():
        fast, _ = _run_both(customer_events, SHORT, monkeypatch)
        retired += fast.lifetime.invoices
    assert retired > 100


def _dbt(state, day, config):
    reference = position_reference(state, day, config)
    return reference.days_beyond_terms, reference.days_beyond_terms_recent


@pytest.mark.parametrize("seed", range(20))
def test_days_beyond_terms_kept_by_the_book_agree_with_the_reference_as_days_pass(seed, monkeypatch):
    """The book answers the recent days beyond terms from prefix sums of its settlements; with
    retirements (a short retention), settlements out of order and days moving on, every answer equals
    the reference position's."""
    monkeypatch.setattr(ledger, "COMPACT_ABOVE", 4)
    events = random_portfolio(seed, n_events=220)
    if seed % 2:
        random.Random(seed).shuffle(events)
    state = new_state("C1")
    config = SHORT if seed % 3 else CONFIG
    checked = 0
    for event in events:
        try:
            apply(state, event, config)
        except ledger.LedgerRejected:
            continue
        day = event.occurred_at.date()
        for probe in (day, day + timedelta(days=20), day + timedelta(days=95)):
            kept = ledger.figures(state, probe, config).days_beyond_terms()
            assert kept == _dbt(state, probe, config)
            checked += kept[1] is not None
    assert checked > 0


def test_prefix_sums_keep_their_anchor_when_old_settlements_retire_and_stay_exact(monkeypatch):
    """As in a live replay, each answer is asked for on the day of the event, so the window only moves
    forward. Retiring old settlements moves the prefix sums' anchor instead of dropping the sums (no
    re-summing of everything retained), and every answer still equals the reference position's."""
    monkeypatch.setattr(ledger, "COMPACT_ABOVE", 4)
    # what retires settled before the window starts (as with the defaults: 180 days kept, a 90-day window)
    config = LedgerConfig(fx_rates=dict(CONFIG.fx_rates), retention_days=30, dso_window_days=14)
    kept_anchor = dropped = checked = 0
    for seed in range(6):
        state = new_state("C1")
        # the odd seeds' events arrive up to 40 days late: backdated settlements land before the anchor
        late = random.Random(seed).random if seed % 2 else (lambda: 0.0)
        events = sorted(random_portfolio(seed, n_events=260),
                         key=lambda event: event.occurred_at + timedelta(days=40 * late()))
        today = None
        for event in events:
            book = ledger._book(state, config)
            before = (book.settle_base, len(book.by_settle)) if book is not None else (None, 0)
            try:
                apply(state, event, config)
            except ledger.LedgerRejected:
                continue
            book = ledger._book(state, config)
            if book is not None and before[0] is not None and len(book.by_settle) < before[1]:
                kept_anchor += book.settle_base is not None
                dropped += book.settle_base is None
            today = max(today or event.occurred_at.date(), event.occurred_at.date())
            kept = ledger.figures(state, today, config).days_beyond_terms()
            assert kept == _dbt(state, today, config)
            checked += kept[1] is not None
    assert checked > 100
    assert kept_anchor > 0, (kept_anchor, dropped)


def test_days_beyond_terms_fall_back_to_the_plain_sum_when_prefix_sums_would_round():
    """Amounts whose running sum needs more digits than Decimal's precision: the prefix sums would
    round, so the book sums the window itself and still answers exactly what the position says."""
    from pipeline.builders import invoice, payment, register as registered

    rate = Decimal("1.23456789012345678901234567")  # amounts in EUR get 28 significant digits: sums need more
    config = LedgerConfig(fx_rates={"EUR": Decimal(1), "CHF": rate})
    events = [registered(limit=10 ** 9, day="2025-12-01")]
    for n in range(6):
        on = (date(2026, 1, 1) + timedelta(days=10 * n)).isoformat()
        events.append(invoice(f"I{n}", 7.77, issued_on=on, terms=0, currency="CHF"))
        events.append(payment(f"P{n}", 7.77, received_on=(date.fromisoformat(on) + timedelta(days=n)).isoformat(),
                              invoice_id=f"I{n}", currency="CHF"))
    state = new_state("C1")
    for event in events:
        apply(state, event, config)
    book = ledger._book(state, config)
    assert book is not None and len(book.by_settle) == 6
    day = date(2026, 3, 15)
    assert book._window_sums(day - timedelta(days=config.dso_window_days), day) is None  # would round
    assert ledger.figures(state, day, config).days_beyond_terms() == _dbt(state, day, config)


def _backtest(lines, monkeypatch, incremental, with_models=True):
    from detectors.config import Thresholds
    from pipeline.backtest import build_engine, run_backtest

    monkeypatch.setattr(ledger, "INCREMENTAL", incremental)
    result = run_backtest(lines, build_engine(Thresholds(), ledger.DEFAULT_CONFIG, with_models=with_models))
    monkeypatch.setattr(ledger, "INCREMENTAL", True)
    return result


@pytest.mark.parametrize("with_models", [True, False])
def test_engine_with_the_shortcuts_raises_exactly_the_alerts_of_the_reference(with_models, monkeypatch):
    from pipeline.simulate import simulate, to_line

    lines = [to_line(e).encode() for e in simulate(customers=80, days=400, seed=11, default_share=0.15)]
    fast = _backtest(lines, monkeypatch, True, with_models)
    slow = _backtest(lines, monkeypatch, False, with_models)
    assert fast.events == slow.events and fast.ticks == slow.ticks
    assert len(fast.updates) > 100
    assert [(u.change, u.alert) for u in fast.updates] == [(u.change, u.alert) for u in slow.updates]
    assert fast.model == slow.model
    for customer_id, record in fast.records.items():
        other = slow.records[customer_id]
        assert record.risk.to_json() == other.risk.to_json()
        assert canonical(record.ledger) == canonical(other.ledger)


def _next_wake_reference(engine, record, today):
    """``RiskEngine.next_wake`` as it was: every date of the full allocation, then the minimum."""
    candidates = []
    for view in _allocate(record.ledger, engine.ledger_config).invoices:
        if view.outstanding_base > 0:
            for offset in (1, 31, 61, 91):
                candidates.append(view.due_on + timedelta(days=offset))
    grace = engine.ledger_config.promise_grace_days
    for promise in record.ledger.promises.values():
        candidates.append(promise.promised_on + timedelta(days=grace + 1))
    candidates.extend(engine.models.wake_dates(record, today))
    later = [day for day in candidates if day > today]
    return min(later) if later else None


def test_next_wake_and_first_wake_agree_with_every_wake_date():
    from detectors.config import Thresholds
    from pipeline.backtest import build_engine, run_backtest
    from pipeline.simulate import simulate, to_line

    lines = [to_line(e).encode() for e in simulate(customers=60, days=300, seed=4, default_share=0.2)]
    engine = build_engine(Thresholds(), ledger.DEFAULT_CONFIG, with_models=True)
    result = run_backtest(lines, engine)
    start = date(2025, 1, 1)
    for record in result.records.values():
        for offset in (0, 100, 200, 280, 299, 320, 400):
            today = start + timedelta(days=offset)
            assert engine.next_wake(record, today) == _next_wake_reference(engine, record, today)
            wakes = list(engine.models.wake_dates(record, today))
            first = engine.models.first_wake(record, today.toordinal())
            assert (date.fromordinal(first) if first else None) == (min(wakes) if wakes else None)


def test_kafka_python_checksums_record_batches_with_the_c_crc32c_not_its_pure_python_fallback():
    """The alert sink and ingest produce with kafka-python; its pure-Python CRC32C cost 2 % of a worker."""
    from kafka.record import _crc32c, util

    assert util._crc32c is not _crc32c.crc
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
