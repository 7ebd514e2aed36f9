"""The inbox's free-text search over the alerts' own text (SQLite: migration 0007's FTS5 trigram index).

On SQLite the words of three or more characters are looked up in ``alerts_fts``
first and the ``LIKE '%word%'`` runs on the rows found only; these tests check
that this finds exactly what the LIKE alone finds (the store's ``search``
filter), that triggers keep the index in step with ``alerts``, and that the
migration indexes the alerts of an existing database. How fast it is:
``benchmarks/web_pages.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select, text

from pipeline.alerts import AlertUpdate
from pipeline.web import queries
from sinks.store import (
    SQLITE_SEARCH_FTS,
    SQLITE_SEARCH_TABLES,
    Alert,
    AlertStore,
    downgrade_database,
    upgrade_database,
)

T0 = datetime(2026, 3, 4, 9, 0, tzinfo=timezone.utc)
#: Customer names with mixed case, punctuation, FTS5 syntax and letters SQLite's lower() leaves alone.
NAMES = ("Acme Trading GmbH", "Müller & Söhne KG", "MÜLLER Bau AG", "O'Brien \"Paper\" Ltd", "100% Foods S.p.A.",
         "Nordic_Metals AB", "Ærø Fisk A/S", "ÆRØ Shipping", "a-b c (NEAR) OR AND *", "Zenith Inc.", None)
DETECTORS = ("credit_limit", "overdue", "payment_habit", "disputes")
TERMS = (
    "gmbh", "GmbH", "GMBH acme", "müller", "MÜLLER", "Müller", "söhne", "ærø", "ÆRØ", "o'brien", '"paper"', '"',
    "100%", "100", "%", "s.p.a.", "p.a", "_", "nordic_metals", "nordic_m", "credit_limit", "credit limit", "CREDIT",
    "limit on", "(near)", "near", "or", "and", "*", "a/s", "al_00", "c01", "c1", "ab", "a", "ø", "AB metals", "zz",
    "no such thing", "overdue c003", "ue on", "inc.", "..", "al_012 c012",
)


def update(n: int, revision: int = 1, detector: str | None = None) -> AlertUpdate:
    customer = f"C{n % 13:03d}"
    name = NAMES[n % len(NAMES)]
    detector = detector or DETECTORS[n % len(DETECTORS)]
    raised = T0 + timedelta(hours=n)
    return AlertUpdate("raised" if revision == 1 else "escalated", {
        "alert_id": f"al_{n:03d}", "customer_id": customer, "customer_name": name, "detector": detector,
        "severity": "warning" if revision == 1 else "critical", "title": f"{detector.replace('_', ' ').title()} on "
        f"{name or customer}", "reasons": [{"code": detector, "message": "over", "value": 1.0, "threshold": 1.0}],
        "score": None, "raised_at": raised.isoformat(), "updated_at": (raised + timedelta(hours=revision)).isoformat(),
        "event_ids": [f"ev-{n}-{revision}"], "status": "open", "revision": revision, "threshold_version": 1,
    })


def found_by_text(store: AlertStore, search: str) -> set[str]:
    """The alert_ids the inbox's text search (``queries._text_matches``) finds."""
    with store._session() as session:
        ids = queries._text_matches(session, search, 10_000)
        assert ids is not None
        return set(session.execute(select(Alert.alert_id).where(Alert.id.in_(ids))).scalars())


def found_by_like(store: AlertStore, search: str) -> set[str]:
    """The alert_ids the store's ``search`` filter (one LIKE per word, no FTS) finds."""
    return {a["alert_id"] for a in store.list_alerts(search=search, limit=None)}


def fts_check(store: AlertStore) -> None:
    """FTS5's own check that the index holds exactly what ``alerts.search_text`` does (raises if not)."""
    with store.engine.begin() as connection:
        connection.execute(text(f"INSERT INTO {SQLITE_SEARCH_FTS} ({SQLITE_SEARCH_FTS}, rank) "
                                "VALUES ('integrity-check', 1)"))


def sqlite_only(url: str) -> None:
    if not url.startswith("sqlite"):
        pytest.skip("the FTS5 index is SQLite's (PostgreSQL searches with pg_trgm)")


def test_the_text_search_finds_exactly_what_the_like_finds(alert_store):
    alert_store.record([update(n) for n in range(120)], ["log"], now=T0)
    for term in TERMS:
        assert found_by_text(alert_store, term) == found_by_like(alert_store, term), term
    # (the terms do find things, and what ASCII-only case folding tells apart stays apart)
    assert len(found_by_like(alert_store, "gmbh")) == 11
    if alert_store.dialect == "sqlite":  # (PostgreSQL's lower() folds Ü as well)
        assert found_by_text(alert_store, "müller") == {f"al_{n:03d}" for n in range(1, 120, len(NAMES))}
        # the trigram index folds Ü to ü, so it offers the MÜLLER rows too; the LIKE keeps them out
        with alert_store.engine.connect() as connection:
            offered = connection.execute(text(f"SELECT count(*) FROM {SQLITE_SEARCH_FTS} "
                                              f"WHERE {SQLITE_SEARCH_FTS} MATCH '\"müller\"'")).scalar_one()
        assert offered > len(found_by_text(alert_store, "müller"))


def test_sqlite_searches_words_of_three_characters_or_more_in_the_fts_index(migrated_database_url):
    sqlite_only(migrated_database_url)
    store = AlertStore(migrated_database_url)
    try:
        store.record([update(n) for n in range(30)], ["log"], now=T0)
        assert found_by_text(store, "acme") and found_by_text(store, "ac")
        with store.engine.begin() as connection:  # empty the index behind the triggers' back
            connection.execute(text(f"INSERT INTO {SQLITE_SEARCH_FTS} ({SQLITE_SEARCH_FTS}) VALUES ('delete-all')"))
        assert found_by_text(store, "acme") == set()  # looked up in the index
        assert found_by_text(store, "ac") == found_by_like(store, "ac") != set()  # too short: the LIKE alone
        with store.engine.begin() as connection:
            connection.execute(text(f"INSERT INTO {SQLITE_SEARCH_FTS} ({SQLITE_SEARCH_FTS}) VALUES ('rebuild')"))
        assert found_by_text(store, "acme") == found_by_like(store, "acme") != set()
    finally:
        store.close()


def test_triggers_keep_the_index_in_step_on_insert_update_and_delete(migrated_database_url):
    sqlite_only(migrated_database_url)
    store = AlertStore(migrated_database_url)
    try:
        store.record([update(n) for n in range(20)], ["log"], now=T0)  # insert
        fts_check(store)
        assert found_by_text(store, "overdue on") == {"al_001", "al_005", "al_009", "al_013", "al_017"}

        store.record([update(5, revision=2, detector="disputes")], ["log"], now=T0)  # upsert: a new title
        store.change_status("al_009", "acknowledged", "anna", now=T0)  # an update that leaves the text alone
        store.assign("al_009", "olga", "anna", now=T0)
        with store.engine.begin() as connection:
            connection.execute(text("UPDATE alerts SET customer_name = 'Renamed Holding' WHERE alert_id = 'al_013'"))
        fts_check(store)
        assert found_by_text(store, "overdue on") == {"al_001", "al_009", "al_013", "al_017"}
        assert "al_005" in found_by_text(store, "disputes on")
        assert found_by_text(store, "renamed holding") == {"al_013"}

        with store.engine.begin() as connection:  # delete
            connection.execute(text("DELETE FROM deliveries WHERE alert_id IN ('al_001', 'al_017')"))
            connection.execute(text("DELETE FROM alert_history WHERE alert_id IN ('al_001', 'al_017')"))
            connection.execute(text("DELETE FROM alerts WHERE alert_id IN ('al_001', 'al_017')"))
        fts_check(store)
        assert found_by_text(store, "overdue on") == {"al_009", "al_013"}
        for term in TERMS:
            assert found_by_text(store, term) == found_by_like(store, term), term
    finally:
        store.close()


def test_migration_0007_indexes_the_alerts_of_a_0006_database(database_url):
    assert upgrade_database(database_url, "0006") == (None, "0006")
    store = AlertStore(database_url)
    try:
        store.record([update(n) for n in range(40)], ["log"], now=T0)
        before = {term: found_by_like(store, term) for term in TERMS}

        assert upgrade_database(database_url) == ("0006", "0007")
        tables = set(inspect(store.engine).get_table_names())
        if store.dialect == "sqlite":
            assert SQLITE_SEARCH_TABLES <= tables
            fts_check(store)  # every alert stored before is in the index
            with store.engine.connect() as connection:
                indexed = connection.execute(text(f"SELECT count(*) FROM {SQLITE_SEARCH_FTS} "
                                                  f"WHERE {SQLITE_SEARCH_FTS} MATCH '\"al_0\"'")).scalar_one()
            assert indexed == 40
        else:
            assert not SQLITE_SEARCH_TABLES & tables  # a no-op on PostgreSQL
        for term in TERMS:
            assert found_by_text(store, term) == before[term], term

        store.record([update(n) for n in range(40, 45)], ["log"], now=T0)  # indexed by the triggers from now on
        assert found_by_text(store, "al_04") == {f"al_04{n}" for n in range(5)}

        downgrade_database(database_url, "0006")  # and back: index and triggers go, alerts stay
        assert not SQLITE_SEARCH_TABLES & set(inspect(store.engine).get_table_names())
        store.record([update(45)], ["log"], now=T0)  # no trigger left pointing at a missing table
        assert found_by_like(store, "al_04") == {f"al_04{n}" for n in range(6)}
    finally:
        store.close()
