"""The inbox at scale: migration 0006's indexes, capped counts, long customer lists (SQLite and PostgreSQL).

How fast the pages are is ``benchmarks/web_pages.py``; these tests check that
the faster ways give the same answers.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect

from pipeline.alerts import AlertUpdate
from pipeline.web import queries
from sinks.store import AlertStore, downgrade_database, make_engine, upgrade_database

T0 = datetime(2026, 3, 4, 9, 0, tzinfo=timezone.utc)
SEVERITIES = ("info", "warning", "critical")
DETECTORS = ("overdue", "credit_limit", "disputes")
NEW_INDEXES = {"ix_alerts_severity_rank_raised_at_id_status", "ix_alerts_raised_at_id_status",
               "ix_alerts_updated_at_id_status", "ix_alerts_detector_severity_rank_raised_at_id",
               "ix_alerts_customer_inbox"}
DROPPED_INDEXES = {f"ix_alerts_{column}" for column in ("customer_id", "detector", "severity", "status", "assignee",
                                                        "raised_at")}


def update(n: int, customers: int = 7) -> AlertUpdate:
    customer = f"C{n % customers:03d}"
    severity, detector = SEVERITIES[n % 3], DETECTORS[n % len(DETECTORS)]
    raised = T0 + timedelta(hours=n // 2)  # pairs share raised_at: the id breaks the tie
    return AlertUpdate("raised", {
        "alert_id": f"al_{n:03d}", "customer_id": customer, "customer_name": f"Firm {customer} GmbH",
        "detector": detector, "severity": severity, "title": f"{detector} on {customer}",
        "reasons": [{"code": detector, "message": "over", "value": float(n), "threshold": 1.0}], "score": None,
        "raised_at": raised.isoformat(), "updated_at": (raised + timedelta(minutes=7 * (n % 5))).isoformat(),
        "event_ids": [f"ev-{n}"], "status": "open", "revision": 1, "threshold_version": 1,
    })


def fill(store: AlertStore, count: int = 30) -> None:
    store.record([update(n) for n in range(count)], ["log"], now=T0)
    for n in range(0, count, 4):
        store.change_status(f"al_{n:03d}", "acknowledged", "anna", now=T0)
    for n in range(1, count, 5):
        store.change_status(f"al_{n:03d}", "resolved", "anna", note="paid", now=T0)
    for n in range(2, count, 3):
        store.assign(f"al_{n:03d}", "olga", "anna", now=T0)


def alert_ids(alerts) -> list[str]:
    return [a["alert_id"] for a in alerts]


def index_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {index["name"] for index in inspect(engine).get_indexes("alerts")}
    finally:
        engine.dispose()


# --- migration 0006 ---------------------------------------------------------------------


def test_migration_0006_adds_the_inbox_indexes_to_a_0005_database_and_keeps_every_alert(database_url):
    assert upgrade_database(database_url, "0005") == (None, "0005")
    store = AlertStore(database_url)
    try:
        fill(store)
        before = {a["alert_id"]: store.get_alert(a["alert_id"]) for a in store.list_alerts(limit=None)}
        assert len(before) == 30 and DROPPED_INDEXES <= index_names(database_url)

        assert upgrade_database(database_url, "0006") == ("0005", "0006")
        names = index_names(database_url)
        assert NEW_INDEXES <= names and not DROPPED_INDEXES & names
        after = {a["alert_id"]: store.get_alert(a["alert_id"]) for a in store.list_alerts(limit=None)}
        assert after == before  # every alert with its history and deliveries, unchanged

        downgrade_database(database_url, "0005")  # and back: the old indexes return, the rows stay
        names = index_names(database_url)
        assert DROPPED_INDEXES <= names and not NEW_INDEXES & names
        assert {a["alert_id"] for a in store.list_alerts(limit=None)} == set(before)
    finally:
        store.close()


# --- counts that stop ------------------------------------------------------------------------


def test_the_count_stops_past_the_next_page_and_says_there_are_more(alert_store, monkeypatch):
    fill(alert_store)  # 30 alerts
    monkeypatch.setattr(queries, "COUNT_LIMIT", 5)
    first = queries.inbox_page(alert_store, {}, "-raised_at", 2, page=1)
    assert (first.total, first.exact, first.pages, first.number) == (5, False, 3, 1)
    assert first.page.has_more and len(first.page.alerts) == 2
    # a deeper page counts as far as the page after it
    deep = queries.inbox_page(alert_store, {}, "-raised_at", 2, page=6)
    assert (deep.total, deep.exact, deep.number) == (14, False, 6)
    assert alert_ids(deep.page.alerts) == alert_ids(alert_store.list_alerts(order="-raised_at", limit=2, offset=10))
    # near the end the count is exact, and a page past the end is the last page
    end = queries.inbox_page(alert_store, {}, "-raised_at", 2, page=99)
    assert (end.total, end.exact, end.pages, end.number) == (30, True, 15, 15)
    assert alert_ids(end.page.alerts) == ["al_001", "al_000"]
    assert queries.count_alerts(alert_store, {"status": ["open"]}, limit=100) == alert_store.count_alerts(status="open")
    assert queries.count_alerts(alert_store, {"status": ["open"]}, limit=3) == 4  # "more than 3"


# --- every filter and sort, page by page, as the store lists them ---------------------------------


FILTERS = [
    {},
    {"status": ["open", "acknowledged"]},
    {"status": ["resolved"]},
    {"severity": "critical", "detector": "overdue"},
    {"status": ["open", "acknowledged"], "assignee": "olga"},
    {"assignee": ""},
    {"customer": ["C001", "C002", "C005"]},  # more than INLINE_CUSTOMERS (set to 2): one array / JSON parameter
    {"status": ["open", "acknowledged"], "customer": ["C003"] * 1 + ["C004", "C006"], "severity": "warning"},
    {"search": "disputes c00"},
    {"search": "no_such_thing"},  # nothing matches
]


@pytest.mark.parametrize("order", ["-severity", "-raised_at", "raised_at", "-updated_at", "customer"])
def test_pages_by_cursor_and_by_number_list_what_the_store_lists(alert_store, monkeypatch, order):
    fill(alert_store)
    monkeypatch.setattr(queries, "INLINE_CUSTOMERS", 2)
    for filters in FILTERS:
        expected = alert_ids(alert_store.list_alerts(order=order, limit=None, **filters))
        assert queries.count_alerts(alert_store, filters) == len(expected), filters
        walked, after, page = [], None, 1
        while True:  # Next, Next, …
            found = queries.inbox_page(alert_store, filters, order, 4, page, after=after)
            assert found.total == len(expected) and found.exact, filters
            assert alert_ids(found.page.alerts) == expected[(page - 1) * 4:page * 4], (filters, page)
            walked += alert_ids(found.page.alerts)
            if not found.page.has_more:
                break
            after, page = found.page.last_cursor, page + 1
        assert walked == expected, (order, filters)
        if page > 1:  # and back by Previous from the last page
            found = queries.inbox_page(alert_store, filters, order, 4, page - 1, before=found.page.first_cursor)
            assert alert_ids(found.page.alerts) == expected[(page - 2) * 4:(page - 1) * 4], (order, filters)
        for typed in range(1, page + 1):  # a page number typed in, no cursor
            found = queries.inbox_page(alert_store, filters, order, 4, typed)
            assert alert_ids(found.page.alerts) == expected[(typed - 1) * 4:typed * 4], (order, filters, typed)


def test_a_search_naming_many_customers_finds_their_alerts(alert_store, monkeypatch):
    fill(alert_store)
    alert_store.save_positions({f"C{n:03d}": {"name": f"Firm C{n:03d} GmbH", "currency": "EUR"} for n in range(7)},
                               now=T0)
    monkeypatch.setattr(queries, "INLINE_CUSTOMERS", 2)
    found = queries.inbox_page(alert_store, {}, "-severity", 50, text="FIRM gmbh")
    assert found.total == 30 and sorted(alert_ids(found.page.alerts)) == [f"al_{n:03d}" for n in range(30)]
    found = queries.inbox_page(alert_store, {}, "-severity", 50, text="c003")
    assert {a["customer_id"] for a in found.page.alerts} == {"C003"}


def test_the_reads_of_a_reading_block_share_one_transaction(alert_store):
    from sqlalchemy import event

    fill(alert_store, 6)
    checkouts = []
    event.listen(alert_store.engine, "checkout", lambda *_: checkouts.append(1))
    with alert_store.reading():
        with alert_store.reading():  # nested: joins the outer one
            assert len(alert_store.list_alerts(customer="C001")) == 1
        assert alert_store.get_position("C001") is None
        assert queries.count_alerts(alert_store, {}) == 6
        assert len(checkouts) == 1
        alert_store.change_status("al_005", "acknowledged", "anna", now=T0)  # a write: its own transaction
        assert len(checkouts) == 2
    assert alert_store.get_alert("al_005")["status"] == "acknowledged"
