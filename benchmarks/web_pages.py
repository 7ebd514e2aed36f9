"""How fast the web pages render on a large store (not a test; ``make bench``).

Seeds a fresh SQLite file and a fresh PostgreSQL database with 100,000 alerts
(with their history), 10,000 customers (positions, 30 daily risk snapshots and
10 events each), then renders pages through the ASGI app in-process (the
Starlette test client: routing, session, database, templates — no network)
N times each and prints p50/p95 per page and database as a markdown table.
Goal: p95 under 200 ms.

    python -m benchmarks.web_pages [--alerts 100000] [--customers 10000] [--runs 30]
                                   [--databases sqlite,postgresql] [--keep DIR]

PostgreSQL: ``CREDITWATCH_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) is used to create and drop a
``creditwatch_bench_*`` database; if it does not answer, that column is skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from sinks.store import (
    SEVERITY_RANK,
    Alert,
    AlertHistory,
    AlertStore,
    CustomerEventRow,
    CustomerPositionRow,
    RiskSnapshotRow,
    upgrade_database,
)

END = datetime(2026, 3, 1, tzinfo=timezone.utc)
GOAL_MS = 200.0
WORDS = ("Acme", "Nordic", "Bolt", "Atlas", "Vertex", "Delta", "Orion", "Harbor", "Summit", "Pioneer", "Cobalt",
         "Granite", "Meridian", "Falcon", "Zenith", "Lumen", "Aurora", "Keystone", "Sterling", "Evergreen")
KINDS = ("Trading", "Logistics", "Foods", "Metals", "Textiles", "Chemicals", "Retail", "Systems", "Motors", "Paper")
FORMS = ("GmbH", "Ltd", "SA", "BV", "AB", "S.p.A.", "Oy", "Inc")
DETECTORS = ("credit_limit", "overdue", "payment_habit", "broken_promise", "disputes", "rating_downgrade",
             "insurance_cover", "unusual_invoice", "payment_reversed", "credit_limit_review", "risk_score",
             "legal_event", "bank_details_change", "ownership_change", "composite")
BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")


def customer_name(rng: random.Random, index: int) -> str:
    return f"{rng.choice(WORDS)} {rng.choice(KINDS)} {index} {rng.choice(FORMS)}"


def _batches(rows: list[dict[str, Any]], size: int = 5000) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def seed(url: str, alerts: int, customers: int, seed_value: int = 5) -> dict[str, Any]:
    """Bulk-insert a portfolio (straight into the tables, as many years of a worker would have)."""
    rng = random.Random(seed_value)
    engine = create_engine(AlertStore(url).url)
    names = {f"C{i:05d}": customer_name(rng, i) for i in range(1, customers + 1)}
    ids = list(names)
    positions, snapshots, events = [], [], []
    for customer_id, name in names.items():
        limit = rng.choice((10_000, 25_000, 50_000, 100_000, 250_000))
        exposure = round(limit * rng.uniform(0.1, 1.3), 2)
        invoices = []
        for n in range(rng.randint(2, 12)):
            days = rng.choice((0, 0, 0, 5, 20, 40, 75, 120))
            bucket = "current" if days == 0 else "1-30" if days <= 30 else "31-60" if days <= 60 else \
                "61-90" if days <= 90 else "90+"
            invoices.append({"invoice_id": f"{customer_id}-I{n}", "issued_on": "2026-01-10", "due_on": "2026-02-09",
                             "currency": "EUR", "amount": "1000.00", "outstanding": "1000.00",
                             "days_past_due": days, "bucket": bucket, "disputed": "0.00"})
        aging = {b: "0.00" for b in BUCKETS}
        for invoice in invoices:
            aging[invoice["bucket"]] = f"{float(aging[invoice['bucket']]) + 1000:.2f}"
        overdue = sum(float(v) for b, v in aging.items() if b != "current")
        risk = round(rng.random(), 4)
        position = {"customer_id": customer_id, "as_of": END.date().isoformat(), "name": name, "country": "DE",
                    "industry": None, "currency": "EUR", "credit_limit": str(limit), "insured_limit": str(limit // 2),
                    "payment_terms_days": 30, "rating": rng.choice(("A", "BBB", "BB", "B")), "rating_agency": "Bureau",
                    "probability_of_default": "0.02", "exposure": f"{exposure:.2f}",
                    "utilisation": f"{exposure / limit:.4f}", "aging": aging, "overdue": f"{overdue:.2f}",
                    "open_invoices": invoices, "unapplied_cash": "0.00", "dso_days": f"{rng.uniform(20, 90):.1f}",
                    "days_beyond_terms": "7.5", "days_beyond_terms_recent": "9.1", "open_disputes": [],
                    "disputed_amount": "0.00", "promises_pending": [], "promises_broken": [], "held": [],
                    "totals": {}, "risk_score": risk}
        positions.append({"customer_id": customer_id, "name": name, "as_of": END.date(), "currency": "EUR",
                          "exposure": exposure, "credit_limit": limit, "utilisation": exposure / limit,
                          "overdue": overdue, "dso_days": float(position["dso_days"]), "rating": position["rating"],
                          "position": position, "updated_at": END, "risk_score": risk})
        for day in range(30):
            snapshots.append({"customer_id": customer_id, "taken_at": END - timedelta(days=day),
                              "risk_score": max(0.0, min(1.0, risk + rng.uniform(-0.1, 0.1))),
                              "exposure": round(exposure * rng.uniform(0.8, 1.1), 2), "credit_limit": limit,
                              "utilisation": None, "overdue": overdue, "dso_days": float(position["dso_days"]),
                              "open_alerts": 1, "details": None})
        for n in range(10):
            at = END - timedelta(days=rng.randint(0, 365), minutes=rng.randint(0, 1440))
            events.append({"event_id": f"{customer_id}-e{n}", "customer_id": customer_id, "type": "invoice.issued",
                           "occurred_at": at, "summary": {"invoice_id": f"{customer_id}-I{n}", "amount": "1000.00",
                                                          "currency": "EUR"}, "recorded_at": at})
    rows, history = [], []
    for n in range(alerts):
        customer_id = rng.choice(ids)
        severity = rng.choices(("info", "warning", "critical"), (5, 4, 1))[0]
        raised = END - timedelta(days=rng.uniform(0, 365))
        status = rng.choices(("open", "acknowledged", "resolved", "false_positive"), (2, 1, 6, 1))[0]
        alert_id = f"al_{n:024x}"
        detector = rng.choice(DETECTORS)
        rows.append({"alert_id": alert_id, "customer_id": customer_id, "customer_name": names[customer_id],
                     "detector": detector, "severity": severity, "severity_rank": SEVERITY_RANK[severity],
                     "title": f"{detector.replace('_', ' ').capitalize()} on {names[customer_id]}",
                     "reasons": [{"code": detector, "message": f"{detector} crossed its threshold",
                                  "value": round(rng.uniform(1, 100000), 2), "threshold": 50000.0}],
                     "score": None, "event_ids": [f"{customer_id}-e{rng.randint(0, 9)}"], "status": status,
                     "revision": 1, "threshold_version": 1,
                     "assignee": rng.choice((None, None, "carl", "olga", "ada")), "raised_at": raised,
                     "updated_at": raised, "stored_at": raised})
        history.append({"alert_id": alert_id, "at": raised, "by": "engine", "change": "raised", "from_status": None,
                        "to_status": "open", "revision": 1, "note": None})
        if status != "open":
            history.append({"alert_id": alert_id, "at": raised + timedelta(hours=3), "by": "olga",
                            "change": "status", "from_status": "open", "to_status": status, "revision": 1,
                            "note": "checked" if status in ("resolved", "false_positive") else None})
    started = time.perf_counter()
    with engine.begin() as connection:
        for table, data in ((Alert, rows), (AlertHistory, history), (CustomerPositionRow, positions),
                            (RiskSnapshotRow, snapshots), (CustomerEventRow, events)):
            for batch in _batches(data):
                connection.execute(insert(table.__table__), batch)
        if engine.dialect.name == "sqlite":
            connection.execute(text("ANALYZE"))
    if engine.dialect.name == "postgresql":  # the steady state autovacuum keeps (visibility map, statistics)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return {"seconds": time.perf_counter() - started, "names": names, "rows": rows}


def measure(url: str, runs: int, data: dict[str, Any], rng: random.Random) -> dict[str, list[float]]:
    from argon2 import PasswordHasher
    from fastapi.testclient import TestClient

    from pipeline.clock import ManualClock
    from pipeline.config import Settings
    from pipeline.web import auth
    from pipeline.web.app import WebSettings, create_app, ensure_user

    store = AlertStore(url)
    auth.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))  # login is not what we measure
    ensure_user(store, "bench", "controller", "bench-password")
    app = create_app(store=store, settings=Settings(), clock=ManualClock(END),
                     web_settings=WebSettings(secret_key="b" * 48))
    from pipeline.web import queries

    names: dict[str, str] = data["names"]
    customers = list(names)
    alerts = [row["alert_id"] for row in data["rows"]]
    deep = queries.alerts_page(store, {}, "-raised_at", 50, offset=998 * 50).last_cursor  # page 999's last row
    pages: dict[str, Any] = {
        "inbox (open, worst first) p1": lambda: "/alerts",
        "inbox all, newest, page 1000 by Next (cursor)": lambda: f"/alerts?status=all&sort=newest&page=1000&after={deep}",
        "inbox all, newest, page 1000 typed (offset)": lambda: "/alerts?status=all&sort=newest&page=1000",
        "inbox critical + detector": lambda: "/alerts?status=all&severity=critical&detector=overdue",
        "inbox assignee, last updated": lambda: "/alerts?assignee=olga&sort=updated",
        "inbox unassigned, newest": lambda: "/alerts?assignee=%28unassigned%29&sort=newest",
        "inbox acknowledged + warning, last updated": lambda: "/alerts?status=acknowledged&severity=warning&sort=updated",
        "inbox by customer": lambda: "/alerts?sort=customer",
        "inbox detector, newest, page 40 typed": lambda: "/alerts?status=all&detector=legal_event&sort=newest&page=40",
        "inbox search: customer id": lambda: f"/alerts?status=all&q={rng.choice(customers)}",
        "inbox search: name word": lambda: f"/alerts?status=all&q={rng.choice(WORDS)}",
        "inbox search: full name": lambda: f"/alerts?status=all&q={names[rng.choice(customers)].replace(' ', '+')}",
        "inbox search: a title word, no customer (alert text)": lambda: f"/alerts?status=all&q={rng.choice(DETECTORS)}",
        "customer page": lambda: f"/customers/{rng.choice(customers)}",
        "alert page": lambda: f"/alerts/{rng.choice(alerts)}",
        "portfolio": lambda: "/portfolio",
    }
    timings: dict[str, list[float]] = {}
    with TestClient(app) as client:
        login = client.get("/login").text
        token = login.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        response = client.post("/login", data={"name": "bench", "password": "bench-password", "csrf_token": token},
                               follow_redirects=False)
        assert response.status_code == 303, response.text
        for name, path in pages.items():
            client.get(path())  # warm up (templates, plans, caches)
            times = []
            for _ in range(runs):
                target = path()
                started = time.perf_counter()
                response = client.get(target)
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{target}: HTTP {response.status_code}")
            timings[name] = times
    store.close()
    return timings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextmanager
def sqlite_database(keep: Path | None) -> Iterator[str]:
    directory = keep or Path(tempfile.mkdtemp(prefix="creditwatch-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{uuid.uuid4().hex[:8]}.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        if keep is None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextmanager
def postgres_database() -> Iterator[str | None]:
    admin_url = make_url(os.environ.get("CREDITWATCH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    admin_url = admin_url.set(drivername="postgresql+psycopg")
    name = f"creditwatch_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as problem:  # noqa: BLE001
        print(f"PostgreSQL unavailable, skipped: {str(problem).splitlines()[0]}", file=sys.stderr)
        admin.dispose()
        yield None
        return
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def _server(url: str) -> str:
    engine = create_engine(AlertStore(url).url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                return "SQLite " + connection.exec_driver_sql("select sqlite_version()").scalar()
            return " ".join(connection.exec_driver_sql("select version()").scalar().split()[:2])
    finally:
        engine.dispose()


def report(argv: list[str] | None = None) -> str:
    """Seed, measure and return the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30, help="renders per page (default 30)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--keep", type=Path, default=None, help="keep the SQLite file in this directory")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {}
    notes = []
    for database in [d.strip() for d in args.databases.split(",") if d.strip()]:
        opener = sqlite_database(args.keep) if database == "sqlite" else postgres_database()
        with opener as url:
            if url is None:
                continue
            upgrade_database(url)
            data = seed(url, args.alerts, args.customers)
            load_before = _load()
            results[database] = measure(url, args.runs, data, random.Random(11))
            notes.append(f"{database} ({_server(url)}): seeded in {data['seconds']:.0f} s; load average "
                         f"(1/5/15 min) {load_before} before the renders, {_load()} after")
            print(notes[-1], file=sys.stderr, flush=True)
    if not results:
        raise RuntimeError("no database to measure")
    databases = list(results)
    pages = list(next(iter(results.values())))
    lines = [
        "## Web pages on a large store",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/web_pages.py`: fresh databases at the "
        f"current schema with {args.alerts:,} alerts (and their history), {args.customers:,} customers "
        f"({args.customers * 30:,} risk snapshots, {args.customers * 10:,} events); each page rendered "
        f"{args.runs} times in-process through the ASGI app (routing, session, database, template; no network), "
        f"on {os.cpu_count()} CPU cores shared with whatever else ran. Goal: p95 < {GOAL_MS:.0f} ms.",
        "",
        "| page | " + " | ".join(f"{d} p50 ms | {d} p95 ms" for d in databases) + " |",
        "| --- |" + " ---: |" * (2 * len(databases)),
    ]
    slow = []
    for page in pages:
        cells = []
        for database in databases:
            times = results[database][page]
            p50, p95 = statistics.median(times), percentile(times, 0.95)
            if p95 >= GOAL_MS:
                slow.append(f"{page} on {database}")
            cells += [f"{p50:.1f}", f"{p95:.1f}" + (" ⚠" if p95 >= GOAL_MS else "")]
        lines.append(f"| {page} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    lines.append(f"- over the goal: {', '.join(slow)}" if slow else f"- every page under {GOAL_MS:.0f} ms at p95")
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> str:
    """For ``benchmarks.run``: the full size, or a small smoke test with ``quick``."""
    return report(["--alerts", "5000", "--customers", "500", "--runs", "5"] if quick else [])


def main(argv: list[str] | None = None) -> int:
    print(report(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
