"""Inbox indexes: every sort order an index, so that a page of a large store is an index scan.

The inbox finds a page's ids from an index first and reads only those rows
(``pipeline.web.queries``); these indexes let it, for each of its sorts:

* ``(severity_rank, raised_at, id, status)``: worst first (the default inbox);
  with ``status`` in it the "open or acknowledged" filter is read from the
  index, not the rows, and a severity filter is a range of it.
* ``(raised_at, id, status)`` (replaces ``(raised_at)``): newest / oldest first;
  a typed page number skips entries of this index, not rows.
* ``(updated_at, id, status)``: last updated first.
* ``(detector, severity_rank, raised_at, id)`` (replaces ``(detector)``): a
  detector filter, in severity order, and counting a detector's alerts.
* ``ix_alerts_customer_inbox (customer_id, raised_at, id, severity_rank, status,
  updated_at)`` (replaces ``(customer_id)``): a customer's alerts newest first
  (the customer page), the "by customer" sort, and a search that names
  customers: their alerts are counted and sorted from this index alone.
* The single-column indexes on ``severity`` (the inbox filters by
  ``severity_rank``), ``status`` and ``assignee`` go: the composite indexes
  that start with those columns serve the same lookups.
* PostgreSQL with pg_trgm (see 0003): a trigram index on the customers' search
  text, ``lower(coalesce(name, '') || ' ' || customer_id)``, so a search by
  name or id does not read every customer. (On SQLite the search reads the
  small ``(name, customer_id)`` index.)

Plain ``CREATE INDEX``: on PostgreSQL it blocks writes to ``alerts`` while it
builds (seconds for 100,000 alerts); run ``creditwatch db upgrade`` with the
workers stopped, as for every migration.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: (name, columns) of the indexes this revision adds to ``alerts``.
ADDED = (
    ("ix_alerts_severity_rank_raised_at_id_status", ["severity_rank", "raised_at", "id", "status"]),
    ("ix_alerts_raised_at_id_status", ["raised_at", "id", "status"]),
    ("ix_alerts_updated_at_id_status", ["updated_at", "id", "status"]),
    ("ix_alerts_detector_severity_rank_raised_at_id", ["detector", "severity_rank", "raised_at", "id"]),
    ("ix_alerts_customer_inbox", ["customer_id", "raised_at", "id", "severity_rank", "status", "updated_at"]),
)
#: The single-column indexes it drops (created by 0001), which the ones above make redundant.
DROPPED = ("customer_id", "detector", "severity", "status", "assignee", "raised_at")
CUSTOMER_TRGM_INDEX = "ix_customer_positions_search_trgm"
CUSTOMER_SEARCH_SQL = "lower(coalesce(name, '') || ' ' || customer_id)"


def _trigram_schema(bind: sa.engine.Connection) -> str | None:
    return bind.execute(sa.text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    )).scalar()


def upgrade() -> None:
    for name, columns in ADDED:
        op.create_index(name, "alerts", columns, unique=False)
    for column in DROPPED:
        op.drop_index(f"ix_alerts_{column}", table_name="alerts")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        schema = _trigram_schema(bind)  # 0003 created it where the server allows
        if schema is not None:
            op.execute(f'CREATE INDEX {CUSTOMER_TRGM_INDEX} ON customer_positions '
                       f'USING gin (({CUSTOMER_SEARCH_SQL}) "{schema}".gin_trgm_ops)')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {CUSTOMER_TRGM_INDEX}")
    for column in DROPPED:
        op.create_index(f"ix_alerts_{column}", "alerts", [column], unique=False)
    for name, _ in reversed(ADDED):
        op.drop_index(name, table_name="alerts")
