"""The IBM Watson Analytics accounts-receivable sample as contract events.

Each row is one invoice: ``invoice.issued`` at InvoiceDate, and, because every
row was settled, ``payment.received`` at SettledDate naming the invoice. A row
marked Disputed gets ``invoice.disputed`` half-way between issue and
settlement and ``invoice.dispute_resolved`` (nothing credited) on the
settlement morning — the file says a dispute happened before settlement but
not when, so this is a stated assumption, and no feature of the late-payment
model may read it before the dispute's own timestamp.

The file's ``countryCode`` values (391, 406, 770, 818, 897) are not ISO codes;
they are mapped to stand-in ISO countries so that events pass the contract.
Credit limits are not in the file: each customer gets three times its largest
invoice, rounded up to a hundred, a plausible limit for the sample's small
tickets. Amounts are taken as EUR.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Iterator

COUNTRY_STAND_INS = {"391": "US", "406": "DE", "770": "FR", "818": "GB", "897": "IT"}


def _day(text: str) -> date:
    month, day, year = (int(part) for part in text.split("/"))
    return date(year, month, day)


def _at(day: date, hour: int) -> str:
    return datetime.combine(day, time(hour), tzinfo=timezone.utc).isoformat()


def convert(csv_path: Path) -> list[dict[str, Any]]:
    """All events of the file, sorted by event time."""
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_customer: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_customer[row["customerID"]].append(row)
    events: list[dict[str, Any]] = []
    for customer_id, invoices in by_customer.items():
        first = min(_day(row["InvoiceDate"]) for row in invoices)
        largest = max(Decimal(row["InvoiceAmount"]) for row in invoices)
        limit = ((largest * 3) / 100).to_integral_value(rounding=ROUND_CEILING) * 100
        events.append(
            {
                "event_id": f"ibm-cust-{customer_id}",
                "type": "customer.registered",
                "customer_id": customer_id,
                "occurred_at": _at(first - timedelta(days=1), 8),
                "source": "ibm-ar-sample",
                "name": f"Customer {customer_id}",
                "country": COUNTRY_STAND_INS[invoices[0]["countryCode"]],
                "credit_limit": str(limit),
                "currency": "EUR",
                "payment_terms_days": 30,
            }
        )
        for row in invoices:
            events.extend(_invoice_events(customer_id, row))
    events.sort(key=lambda event: (event["occurred_at"], event["event_id"]))
    return events


def _invoice_events(customer_id: str, row: dict[str, str]) -> Iterator[dict[str, Any]]:
    number = row["invoiceNumber"]
    issued_on, due_on, settled_on = _day(row["InvoiceDate"]), _day(row["DueDate"]), _day(row["SettledDate"])
    amount = str(Decimal(row["InvoiceAmount"]).quantize(Decimal("0.01")))
    common = {"customer_id": customer_id, "source": "ibm-ar-sample", "invoice_id": number}
    yield {
        "event_id": f"ibm-inv-{number}",
        "type": "invoice.issued",
        "occurred_at": _at(issued_on, 9),
        "amount": amount,
        "currency": "EUR",
        "issued_on": issued_on.isoformat(),
        "due_on": due_on.isoformat(),
        **common,
    }
    if row["Disputed"] == "Yes":
        disputed_on = issued_on + (settled_on - issued_on) / 2
        yield {"event_id": f"ibm-dsp-{number}", "type": "invoice.disputed", "occurred_at": _at(disputed_on, 10), **common}
        yield {
            "event_id": f"ibm-dsr-{number}",
            "type": "invoice.dispute_resolved",
            "occurred_at": _at(settled_on, 8),
            "credited_amount": "0",
            **common,
        }
    yield {
        "event_id": f"ibm-pay-{number}",
        "type": "payment.received",
        "occurred_at": _at(settled_on, 12),
        "payment_id": f"PAY-{number}",
        "amount": amount,
        "currency": "EUR",
        "received_on": settled_on.isoformat(),
        **{key: value for key, value in common.items()},
    }


def write_jsonl(events: list[dict[str, Any]], out: Path) -> None:
    with out.open("w") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")
