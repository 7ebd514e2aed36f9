"""``creditwatch ingest`` and command-line errors, run as a user runs them (subprocess)."""

from __future__ import annotations

import json
import time
import pytest

from tests.worker_harness import cli_env, read_topic, run_cli, settings_of

pytestmark = pytest.mark.broker


def event(n: int, **overrides) -> dict:
    body = {
        "event_id": f"ing-{n}", "type": "invoice.issued", "customer_id": f"C{n % 3}",
        "occurred_at": "2026-03-01T09:00:00+00:00", "invoice_id": f"I{n}", "amount": "100.00",
        "currency": "EUR", "issued_on": "2026-03-01", "due_on": "2026-03-31",
    }  # fmt: skip
    body.update(overrides)
    return body


def test_ingest_reports_bad_lines_with_file_and_line_skips_them_and_publishes_the_rest(
    broker, unique_prefix, tmp_path
):
    env = cli_env(broker, unique_prefix, f"{unique_prefix}worker", tmp_path / "data")
    settings = settings_of(env)
    missing_id = event(4)
    del missing_id["event_id"]
    lines = [
        json.dumps(event(1)),                                   # 1 good
        '{"event_id": "x", "type": ',                           # 2 not JSON
        json.dumps(event(3)),                                   # 3 good
        json.dumps(missing_id),                                 # 4 no event_id
        "",                                                     # 5 blank: ignored
        json.dumps(event(6, type="invoice.teleported")),        # 6 unknown type
        json.dumps({"event_id": "p7", "type": "payment.received", "customer_id": "C1",
                    "occurred_at": "2026-03-02T10:00:00+00:00", "payment_id": "P7", "amount": "50.00",
                    "currency": "EUR", "received_on": "2026-03-02"}),  # 7 good, payments  # fmt: skip
        json.dumps(event(8, currency="ZZZ")),                   # 8 unknown currency
        json.dumps(event(9, amount="1.005")),                   # 9 three decimals
    ]  # fmt: skip
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = run_cli(["ingest", str(path)], env)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    problems = result.stderr.splitlines()
    assert [line.split(":", 2)[:2] for line in problems] == [
        ["mixed.jsonl", "2"], ["mixed.jsonl", "4"], ["mixed.jsonl", "6"], ["mixed.jsonl", "8"], ["mixed.jsonl", "9"]
    ], result.stderr
    reasons = [line.split(":", 2)[2].strip() for line in problems]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1] == "field 'event_id' is required"
    assert "unknown event type 'invoice.teleported'" in reasons[2]
    assert "'ZZZ' is not an ISO 4217 currency code" in reasons[3]
    assert "field 'amount'" in reasons[4]
    summary = result.stdout.splitlines()
    assert len(summary) == 1, result.stdout
    assert summary[0] == (
        f"published 3 events ({settings.topic('invoices')}: 2, {settings.topic('payments')}: 1); skipped 5 bad lines"
    )

    invoices = read_topic(settings.bootstrap_servers, settings.topic("invoices"), count=2)
    payments = read_topic(settings.bootstrap_servers, settings.topic("payments"), count=1)
    assert sorted((r.key, r.value) for r in invoices) == sorted(
        [(b"C1", lines[0].encode()), (b"C0", lines[2].encode())]
    )
    assert [(r.key, r.value) for r in payments] == [(b"C1", lines[6].encode())]


def test_ingest_with_an_unreachable_broker_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(event(1)) + "\n")
    env = cli_env(_NoBroker(), "t.", "g", tmp_path, CREDITWATCH_BROKER_URL="127.0.0.1:1")

    started = time.monotonic()
    result = run_cli(["ingest", str(path)], env, timeout=90)
    took = time.monotonic() - started

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("creditwatch: error: cannot reach the broker at 127.0.0.1:1")
    assert result.stdout == ""
    print(f"\nunreachable broker reported after {took:.1f}s")
    assert took < 25  # the admin client's 10 s limit, not kafka-python's 30 s bootstrap default


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["broker", "--port", "abc"], "argument --port: 'abc' is not a port number"),
        (["nope"], "invalid choice: 'nope'"),
        (["ingest", "/nonexistent/events.jsonl"], "no such file: /nonexistent/events.jsonl"),
    ],
)
def test_bad_command_line_prints_one_readable_line_and_exits_2(args, fragment, tmp_path):
    env = cli_env(_NoBroker(), "t.", "g", tmp_path)
    result = run_cli(args, env, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("creditwatch") and "error:" in lines[0]
    assert fragment in lines[0]
    assert result.stdout == ""


class _NoBroker:
    """Stands in for the broker fixture where no broker must be reached."""

    url = "kafka://127.0.0.1:1"
