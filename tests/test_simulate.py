"""The simulated portfolio (``pipeline.simulate``, ``creditwatch simulate``)."""

from __future__ import annotations

import doctest
import json
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from statistics import mean

import pytest

import pipeline.simulate as simulation
from pipeline.cli import main
from pipeline.clock import ManualClock
from pipeline.events import parse_event
from pipeline.ledger import LedgerRejected, allocate, apply, position
from pipeline.simulate import evaluate, ground_truth, live_stream, simulate, simulate_lines, to_line

START = date(2025, 1, 1)


@pytest.fixture(scope="module")
def portfolio() -> list[str]:
    """250 customers over two years: about 28,000 events, 20 of the customers written off."""
    return list(simulate_lines(250, 730, seed=11, default_share=0.08))


@pytest.fixture(scope="module")
def events(portfolio) -> list[dict]:
    return [json.loads(line) for line in portfolio]


@pytest.fixture(scope="module")
def parsed(portfolio) -> list:
    """Every line through the edge validation (raises on the first invalid one)."""
    return [parse_event(line) for line in portfolio]


def test_same_seed_gives_byte_identical_output():
    assert list(simulate_lines(60, 400, seed=5)) == list(simulate_lines(60, 400, seed=5))


def test_dicts_and_lines_are_the_same_events():
    assert [to_line(event) for event in simulate(60, 400, seed=5)] == list(simulate_lines(60, 400, seed=5))


def test_different_seed_gives_a_different_portfolio():
    assert list(simulate_lines(60, 400, seed=5)) != list(simulate_lines(60, 400, seed=6))


def test_every_event_validates_sorted_by_time_with_unique_ids(parsed):
    assert len({event.event_id for event in parsed}) == len(parsed)
    keys = [(event.occurred_at, event.event_id) for event in parsed]
    assert keys == sorted(keys)
    assert parsed[0].occurred_at >= datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert parsed[-1].occurred_at < datetime(2027, 1, 1, tzinfo=timezone.utc)  # 730 days from 2025-01-01
    assert {event.type for event in parsed} == set(
        "invoice.issued invoice.adjusted invoice.disputed invoice.dispute_resolved invoice.written_off "
        "payment.received payment.reversed payment.promised customer.registered customer.credit_limit_changed "
        "customer.terms_changed customer.rating_changed customer.insurance_limit_changed "
        "customer.bank_details_changed customer.ownership_changed customer.legal_event".split()
    )


def test_portfolio_mixes_countries_currencies_and_payment_habits(events):
    registered = [e for e in events if e["type"] == "customer.registered"]
    assert len(registered) == 250
    assert len({e["country"] for e in registered}) >= 12
    assert {"EUR", "GBP", "USD", "CHF", "SEK", "NOK", "DKK", "PLN"} <= {e["currency"] for e in registered}
    assert len({e["industry"] for e in registered}) >= 10
    assert {e["payment_terms_days"] for e in registered} <= {30, 45, 60, 75, 90, 120}
    payments = [e for e in events if e["type"] == "payment.received"]
    on_account = sum("invoice_id" not in e for e in payments)
    assert 0.05 < on_account / len(payments) < 0.4
    assert len(registered) == len({e["name"] for e in registered})


def test_replay_through_the_ledger_rejects_nothing_and_holds_nothing(parsed, events):
    states: dict = {}
    for event in parsed:
        try:
            states[event.customer_id] = apply(states.get(event.customer_id), event)
        except LedgerRejected as refused:  # pragma: no cover - the failure message says which
            pytest.fail(f"ledger rejected {event.event_id}: {refused.reason}")
    end = START + timedelta(days=730)
    truth = ground_truth(events)
    for customer_id, state in states.items():
        pos = position(state, end)
        assert pos.held == [], customer_id
        assert all(view.due_base >= 0 for view in allocate(state).invoices), customer_id
        assert pos.unapplied_cash == 0, customer_id
        if customer_id in truth:
            assert pos.exposure == 0, f"{customer_id} still owes {pos.exposure} after its write-off"


def test_cash_on_account_settles_the_invoice_it_was_meant_for_at_every_step():
    """A payment without invoice_id goes, at the time and ever after, to exactly one invoice, in full."""
    states: dict = {}
    meant: dict[tuple[str, str], list] = {}
    checked = 0
    for line in simulate_lines(40, 730, seed=3):
        event = parse_event(line)
        state = states[event.customer_id] = apply(states.get(event.customer_id), event)
        if event.type == "payment.received" and event.invoice_id is None:
            parts = allocate(state).allocations.get(event.payment_id, [])
            assert len(parts) == 1 and parts[0][1] == event.amount * simulation.DEFAULT_FX_RATES[event.currency]
            meant[(event.customer_id, event.payment_id)] = parts
        if event.type.startswith("payment.") or event.type == "invoice.issued":
            allocations = allocate(state).allocations
            for (customer_id, payment_id), parts in meant.items():
                if customer_id == event.customer_id and payment_id in state.payments:  # not yet retired
                    assert allocations[payment_id] == parts, (payment_id, event.event_id)
                    checked += 1
    assert len(meant) > 50 and checked > 1000


@pytest.mark.parametrize("share", [0.0, 0.05, 0.12])
def test_written_off_share_matches_default_share(share):
    events = list(simulate(200, 500, seed=2, default_share=share))
    truth = ground_truth(events)
    assert len(truth) == round(200 * share)
    assert all(START < day < START + timedelta(days=500) for day in truth.values())


def test_the_default_share_of_the_big_portfolio_is_written_off(events):
    truth = ground_truth(events)
    assert len(truth) == 20
    # Every write-off of a customer happens on one day: the ground truth date.
    days = defaultdict(set)
    for event in events:
        if event["type"] == "invoice.written_off":
            days[event["customer_id"]].add(event["occurred_at"][:10])
    assert all(len(found) == 1 for found in days.values())


def _days_late(events: list[dict]) -> dict[str, list[tuple[date, int]]]:
    """customer → [(due date, days late)]: from payments naming the invoice, and from write-offs (unpaid)."""
    due: dict[tuple[str, str], date] = {}
    late: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event["customer_id"], event.get("invoice_id"))
        if event["type"] == "invoice.issued":
            due[key] = date.fromisoformat(event["due_on"])
        elif event["type"] == "payment.received" and key in due:
            late[key] = (date.fromisoformat(event["received_on"]) - due[key]).days
        elif event["type"] == "invoice.written_off" and key in due:
            late[key] = (date.fromisoformat(event["occurred_at"][:10]) - due[key]).days
    result: dict[str, list[tuple[date, int]]] = defaultdict(list)
    for (customer_id, invoice_id), days in late.items():
        result[customer_id].append((due[(customer_id, invoice_id)], max(days, 0)))
    return result


def test_defaulting_customers_pay_later_before_their_write_off_healthy_ones_mostly_do_not(events):
    truth = ground_truth(events)
    late = _days_late(events)
    worse = []
    for customer_id, write_off in truth.items():
        history = late[customer_id]
        first_half = [d for due, d in history if due < START + (write_off - START) / 2]
        last_90 = [d for due, d in history if write_off - timedelta(days=90) <= due < write_off]
        if first_half and last_90:
            worse.append(mean(last_90) > mean(first_half) + 10)
    assert len(worse) >= 15 and sum(worse) / len(worse) >= 0.8
    # Healthy customers: the 90 days before a comparable point (two months before the end) vs their first year.
    reference = START + timedelta(days=730 - 60)
    healthy_worse = []
    for customer_id, history in late.items():
        if customer_id in truth:
            continue
        first_year = [d for due, d in history if due < START + timedelta(days=365)]
        last_90 = [d for due, d in history if reference - timedelta(days=90) <= due < reference]
        if len(first_year) >= 3 and last_90:
            healthy_worse.append(mean(last_90) > mean(first_year) + 10)
    assert len(healthy_worse) > 120
    assert 0 < sum(healthy_worse) / len(healthy_worse) < 0.1  # a few rough patches, not a trend


def test_defaulting_customers_collect_more_warning_signs_than_healthy_ones(events):
    truth = ground_truth(events)
    signs = defaultdict(set)
    for event in events:
        kind = event["type"]
        if kind in ("payment.reversed", "customer.legal_event") or (
            kind == "customer.insurance_limit_changed" and event["insured_limit"] == 0
        ):
            signs[event["customer_id"]].add(kind)
    customers = {e["customer_id"] for e in events}
    share_defaulted = mean(len(signs[c]) > 0 for c in truth)
    share_healthy = mean(len(signs[c]) > 0 for c in customers - set(truth))
    assert share_defaulted > 0.6 and share_healthy < 0.1
    legal = {e["customer_id"] for e in events if e["type"] == "customer.legal_event"}
    assert legal and legal <= set(truth)  # legal events only for defaulting customers
    # Noise: healthy customers too have disputes, broken promises and rating changes.
    assert sum(1 for e in events if e["type"] == "invoice.disputed" and e["customer_id"] not in truth) > 50
    assert sum(1 for e in events if e["type"] == "customer.bank_details_changed" and e["customer_id"] not in truth) > 3


def test_ground_truth_is_the_first_write_off_day_of_each_customer():
    events = [
        {"type": "invoice.written_off", "customer_id": "C2", "occurred_at": "2025-05-02T19:00:00+00:00"},
        {"type": "invoice.issued", "customer_id": "C1", "occurred_at": "2025-01-02T10:00:00+00:00"},
        {"type": "invoice.written_off", "customer_id": "C2", "occurred_at": "2025-05-01T23:30:00-02:00"},
    ]
    assert ground_truth(events) == {"C2": date(2025, 5, 2)}


def test_evaluate_counts_recall_lead_time_and_precision():
    truth = {"C1": date(2025, 6, 1), "C2": date(2025, 6, 1)}
    alerts = [
        {"customer_id": "C1", "detector": "overdue", "severity": "info", "updated_at": "2025-01-01T00:00:00+00:00"},
        {"customer_id": "C1", "detector": "overdue", "severity": "warning", "updated_at": "2025-04-02T00:00:00+00:00"},
        {"customer_id": "C2", "detector": "legal_event", "severity": "critical", "updated_at": "2025-06-02T00:00:00+00:00"},
        {"customer_id": "C3", "detector": "disputes", "severity": "warning", "raised_at": "2025-03-01T00:00:00+00:00"},
    ]
    result = evaluate(alerts, truth)
    assert (result.recall, result.precision, result.median_lead_days) == (0.5, 0.5, 60.0)
    assert result.false_positives == {"disputes": 1}


def test_live_stream_replays_the_recent_past_then_follows_the_clock():
    clock = ManualClock(datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc))
    began = clock.now()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(timedelta(seconds=seconds))

    stream = live_stream(30, seed=4, clock=clock, speed=3600.0, history_days=60, horizon_days=30, sleep=sleep)
    history = []
    for event in stream:
        history.append(event)
        if datetime.fromisoformat(event["occurred_at"]) > began:
            break
    assert slept, "the first event after 'now' waits for the clock"
    assert history[0]["occurred_at"].startswith("2026-01-03")  # 60 days of history
    simulated_now = began + (clock.now() - began) * 3600
    assert datetime.fromisoformat(history[-1]["occurred_at"]) <= simulated_now
    before_now = [e for e in history if datetime.fromisoformat(e["occurred_at"]) <= began]
    assert len(before_now) == len(history) - 1 > 100


def test_impossible_arguments_are_refused():
    with pytest.raises(ValueError, match="customers"):
        list(simulate(0, 10, seed=1))
    with pytest.raises(ValueError, match="days"):
        list(simulate(10, 0, seed=1))
    with pytest.raises(ValueError, match="default_share"):
        list(simulate(10, 10, seed=1, default_share=1.5))


def test_docstring_examples_run():
    assert doctest.testmod(simulation).failed == 0


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--customers", "-5"], "argument --customers: -5"),
        (["--days", "0"], "argument --days: 0"),
        (["--start", "2025-02-30"], "--start: '2025-02-30' is not a date written YYYY-MM-DD"),
        (["--seed", "x"], "--seed: 'x' is not a whole number"),
        (["--default-share", "1.5"], "--default-share: must be between 0 and 1"),
    ],
)
def test_cli_bad_arguments_give_one_readable_line_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["simulate", *argv])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_cli_out_writes_the_file(tmp_path, capsys):
    target = tmp_path / "portfolio.jsonl"
    assert main(["simulate", "--customers", "30", "--days", "200", "--seed", "9", "--start", "2026-01-01",
                 "--default-share", "0.1", "--out", str(target)]) == 0
    lines = target.read_text(encoding="utf-8").splitlines()
    assert lines == list(simulate_lines(30, 200, seed=9, start=date(2026, 1, 1), default_share=0.1))
    out = capsys.readouterr().out
    assert f"wrote {len(lines):,} events" in out and "3 written off" in out


def test_cli_writes_to_stdout_without_out(capsys):
    assert main(["simulate", "--customers", "5", "--days", "60", "--seed", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == list(simulate_lines(5, 60, seed=1))


def test_cli_unwritable_out_is_one_line(tmp_path, capsys):
    assert main(["simulate", "--customers", "5", "--days", "10", "--out", str(tmp_path / "missing" / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("creditwatch: error: cannot write") and err.count("\n") == 1


@pytest.mark.broker
def test_cli_to_broker_publishes_every_event_to_its_topic(broker, unique_prefix, monkeypatch, capsys):
    from streams.admin import high_watermarks

    monkeypatch.setenv("CREDITWATCH_BROKER_URL", broker.url)
    monkeypatch.setenv("CREDITWATCH_TOPIC_PREFIX", unique_prefix)
    monkeypatch.setenv("CREDITWATCH_PARTITIONS", "2")
    expected = list(simulate_lines(8, 90, seed=3))
    assert main(["simulate", "--customers", "8", "--days", "90", "--seed", "3", "--to-broker"]) == 0
    assert f"published {len(expected)} events" in capsys.readouterr().out
    published = {kind: sum(high_watermarks(broker.bootstrap, f"{unique_prefix}{kind}").values())
                 for kind in ("invoices", "payments", "customers")}
    by_kind = defaultdict(int)
    for line in expected:
        by_kind[{"invoice": "invoices", "payment": "payments", "customer": "customers"}[json.loads(line)["type"].split(".")[0]]] += 1
    assert published == dict(by_kind)
