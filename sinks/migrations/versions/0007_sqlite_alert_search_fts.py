"""SQLite: a trigram full-text index on the alerts' search text, so a free-text inbox search does not
read every alert.

PostgreSQL has a pg_trgm index on ``alerts.search_text`` since 0003; SQLite's
plain index on it only makes the scan narrower. This revision adds, on SQLite
only (on PostgreSQL it does nothing):

* ``alerts_fts``: an FTS5 table with the ``trigram`` tokenizer (SQLite 3.34 or
  later) over ``alerts.search_text`` as *external content* (``content='alerts'``,
  ``content_rowid='id'``): it holds the trigram index only, not a second copy of
  the text. FTS5 keeps it in the shadow tables ``alerts_fts_data``, ``_idx``,
  ``_docsize`` and ``_config`` (``sinks.store.SQLITE_SEARCH_TABLES``).
* Triggers on ``alerts`` that keep it in step: a new alert is indexed, a deleted
  one removed, and an update that changes ``search_text`` (alert id, customer,
  name or title) re-indexes the row; other updates (status, assignee, …) leave
  the index alone.
* The index is filled from the alerts already stored (FTS5 ``rebuild``).

The inbox uses it for words of three or more characters as a first, coarse
filter, and keeps its ``LIKE '%word%'`` on the rows it finds, so the results are
those of the LIKE alone (``pipeline.web.queries``).

A later migration that rebuilds ``alerts`` with ``batch_alter_table`` (copy,
drop, rename) drops these triggers with the old table: it must create them
again (:func:`create_triggers`) and ``rebuild`` the index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlite3

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FTS_TABLE = "alerts_fts"
TRIGGERS = {
    "alerts_fts_insert": "AFTER INSERT ON alerts BEGIN "
    f"INSERT INTO {FTS_TABLE} (rowid, search_text) VALUES (new.id, new.search_text); END",
    "alerts_fts_delete": "AFTER DELETE ON alerts BEGIN "
    f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}, rowid, search_text) VALUES ('delete', old.id, old.search_text); END",
    "alerts_fts_update": "AFTER UPDATE ON alerts WHEN old.search_text IS NOT new.search_text BEGIN "
    f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}, rowid, search_text) VALUES ('delete', old.id, old.search_text); "
    f"INSERT INTO {FTS_TABLE} (rowid, search_text) VALUES (new.id, new.search_text); END",
}


def create_triggers() -> None:
    for name, body in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    if sqlite3.sqlite_version_info < (3, 34):
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} has no trigram tokenizer; creditwatch needs 3.34 or later")
    op.execute(f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(search_text, content='alerts', content_rowid='id', "
               "tokenize='trigram')")
    create_triggers()
    op.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}) VALUES ('rebuild')")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
