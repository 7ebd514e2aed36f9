"""Customer events (the web app's timeline), risk score on positions, fast inbox search.

* ``customer_events``: one row per input event the worker applied (event_id
  unique; type, occurred_at and the event's own fields as ``summary``), written
  in the same transaction as the batch's alerts. The customer page's timeline.
* ``customer_positions.risk_score`` (+ index): the latest model risk score, so
  "the riskiest customers" is an index scan, not a look through every snapshot.
* ``risk_snapshots (taken_at)``: the portfolio's DSO trend groups by day.
* ``customer_positions (name, customer_id)``: the inbox finds the customers a
  search names from this small index, then their alerts by ``customer_id``.
* ``alerts (assignee, status)``: "my open alerts".
* Inbox search (``alerts.search_text LIKE '%word%'``): on PostgreSQL a pg_trgm
  GIN index when the extension is available (it is a trusted extension since
  PostgreSQL 13; without it the search still works, by a scan). On SQLite a
  plain index on ``search_text``: counting matches scans that index, not the table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-08
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TRGM_INDEX = "ix_alerts_search_text_trgm"


def _trigram_schema(bind: sa.engine.Connection) -> str | None:
    """The schema holding pg_trgm, creating the extension if it is available and allowed; None if not."""
    installed = bind.execute(sa.text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    )).scalar()
    if installed:
        return installed
    available = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).scalar()
    if not available:
        log.warning("pg_trgm is not available on this server; inbox search will scan the alerts table")
        return None
    for statement in ("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public", "CREATE EXTENSION IF NOT EXISTS pg_trgm"):
        try:
            with bind.begin_nested():
                bind.execute(sa.text(statement))
        except sa.exc.DBAPIError as problem:
            log.warning("cannot create pg_trgm (%s)", str(problem.orig).splitlines()[0])
            continue
        return bind.execute(sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_trgm'"
        )).scalar()
    log.warning("pg_trgm could not be created; inbox search will scan the alerts table")
    return None


def upgrade() -> None:
    op.create_table(
        "customer_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("summary", JSONType, nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_customer_events_event_id")),
    )
    op.create_index(op.f("ix_customer_events_customer_id_occurred_at"), "customer_events",
                    ["customer_id", "occurred_at"], unique=False)
    with op.batch_alter_table("customer_positions") as batch:
        batch.add_column(sa.Column("risk_score", sa.Float(), nullable=True))
    op.create_index(op.f("ix_customer_positions_risk_score"), "customer_positions", ["risk_score"], unique=False)
    op.create_index(op.f("ix_customer_positions_name_customer_id"), "customer_positions", ["name", "customer_id"],
                    unique=False)
    op.create_index(op.f("ix_alerts_assignee_status"), "alerts", ["assignee", "status"], unique=False)
    op.create_index(op.f("ix_risk_snapshots_taken_at"), "risk_snapshots", ["taken_at"], unique=False)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        schema = _trigram_schema(bind)
        if schema is not None:
            opclass = f'"{schema}".gin_trgm_ops'
            op.execute(f"CREATE INDEX {TRGM_INDEX} ON alerts USING gin (search_text {opclass})")
    else:
        op.create_index(TRGM_INDEX, "alerts", ["search_text"], unique=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {TRGM_INDEX}")  # the extension stays: others may use it
    else:
        op.drop_index(TRGM_INDEX, table_name="alerts")
    op.drop_index(op.f("ix_risk_snapshots_taken_at"), table_name="risk_snapshots")
    op.drop_index(op.f("ix_alerts_assignee_status"), table_name="alerts")
    op.drop_index(op.f("ix_customer_positions_name_customer_id"), table_name="customer_positions")
    op.drop_index(op.f("ix_customer_positions_risk_score"), table_name="customer_positions")
    with op.batch_alter_table("customer_positions") as batch:
        batch.drop_column("risk_score")
    op.drop_index(op.f("ix_customer_events_customer_id_occurred_at"), table_name="customer_events")
    op.drop_table("customer_events")
