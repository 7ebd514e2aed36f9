"""State size per customer: 20 open invoices and a year of history (issue goal ≤ 4 KB).

Builds one customer through the real engine (ledger, models, detectors): two
invoices a week for a year, each paid 0–20 days late except the last 20,
which stay open; a few disputes, promises and a rating change. Reports the
bytes the worker writes to its changelog for that customer, and what each
part of the record takes.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, time, timedelta, timezone

from detectors.config import Thresholds
from pipeline.builders import invoice, make, payment, register
from pipeline.config import LedgerConfig
from pipeline.engine import CustomerRecord, RiskEngine, encode_record
from pipeline.ledger import state_to_dict
from pipeline.models import OnlineModels


def build_customer(open_invoices: int = 20, weeks: int = 52, seed: int = 1) -> CustomerRecord:
    rng = random.Random(seed)
    ledger = LedgerConfig()
    engine = RiskEngine(Thresholds(), ledger, OnlineModels.from_options(Thresholds().models, ledger))
    start = date(2025, 1, 6)
    events = [register(day=(start - timedelta(days=1)).isoformat(), limit=400000)]
    total = weeks * 2
    for n in range(total):
        issued = start + timedelta(days=n * 7 // 2)
        events.append(invoice(f"INV-{n:05d}", rng.randint(2_000, 9_000), issued_on=issued.isoformat(), terms=30))
        if n < total - open_invoices:
            paid = issued + timedelta(days=30 + rng.randint(0, 20))
            events.append(payment(f"PAY-{n:05d}", invoice_id=f"INV-{n:05d}", amount=events[-1].amount,
                                  received_on=paid.isoformat()))
        if n % 25 == 7:
            events.append(make("invoice.disputed", issued + timedelta(days=10), invoice_id=f"INV-{n:05d}"))
            events.append(make("invoice.dispute_resolved", issued + timedelta(days=20), invoice_id=f"INV-{n:05d}",
                               credited_amount="0"))
    events.append(make("customer.rating_changed", start + timedelta(days=200), agency="S&P", rating="BB"))
    events.sort(key=lambda e: e.occurred_at)
    record = None
    for event in events:
        now = datetime.combine(event.occurred_at.date(), time(12), tzinfo=timezone.utc)
        record, _ = engine.on_event(record, event, now)
    return record


def run() -> str:
    record = build_customer()
    total = len(encode_record(record))
    ledger = state_to_dict(record.ledger)
    parts = {
        "ledger: invoices": len(json.dumps(ledger["invoices"], separators=(",", ":"))),
        "ledger: payments": len(json.dumps(ledger["payments"], separators=(",", ":"))),
        "ledger: seen event ids": len(json.dumps(ledger["seen"], separators=(",", ":"))),
        "ledger: profile, lifetime, promises": len(json.dumps(
            {k: ledger[k] for k in ("profile", "lifetime", "promises")}, separators=(",", ":"))),
        "alerts, detector memory": len(json.dumps(
            {"b": record.risk.book.to_json(), "m": record.risk.memory, "s": [[d.isoformat(), n] for d, n in record.risk.recent]},
            separators=(",", ":"))),
        "models": len(json.dumps(record.risk.models, separators=(",", ":"))),
    }
    lines = [
        "## State size per customer",
        "",
        "One customer through the real engine: two invoices a week for a year, 20 of them open at the end, "
        "disputes and a rating change (`benchmarks/state_size.py`). Goal: ≤ 4 KB.",
        "",
        f"Retained in state: {len(record.ledger.invoices)} invoices, {len(record.ledger.payments)} payments, "
        f"{len(record.ledger.seen)} remembered event ids.",
        "",
        "| part | bytes (JSON) |",
        "| --- | ---: |",
        *[f"| {name} | {size:,} |" for name, size in parts.items()],
        f"| **whole record as written to the changelog** | **{total:,}** |",
        "",
        f"Result: {total:,} bytes — {'within' if total <= 4096 else 'over'} the 4 KB goal.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
