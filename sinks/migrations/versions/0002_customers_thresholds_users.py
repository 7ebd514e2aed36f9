"""Customer positions and risk snapshots, threshold changes, users.

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _money(name: str) -> sa.Column:
    return sa.Column(name, sa.Numeric(precision=20, scale=4), nullable=True)


def upgrade() -> None:
    op.create_table(
        "customer_positions",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        _money("exposure"),
        _money("credit_limit"),
        sa.Column("utilisation", sa.Numeric(precision=12, scale=6), nullable=True),
        _money("overdue"),
        _money("dso_days"),
        sa.Column("rating", sa.String(length=32), nullable=True),
        sa.Column("position", JSONType, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_positions")),
    )
    op.create_table(
        "risk_snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("risk_score", sa.Float(), nullable=True),
        _money("exposure"),
        _money("credit_limit"),
        sa.Column("utilisation", sa.Numeric(precision=12, scale=6), nullable=True),
        _money("overdue"),
        _money("dso_days"),
        sa.Column("open_alerts", sa.Integer(), nullable=True),
        sa.Column("details", JSONType, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_snapshots")),
        sa.UniqueConstraint("customer_id", "taken_at", name=op.f("uq_risk_snapshots_customer_id_taken_at")),
    )
    op.create_table(
        "threshold_changes",
        sa.Column("version", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=500), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_threshold_changes")),
    )
    op.create_index(op.f("ix_threshold_changes_digest"), "threshold_changes", ["digest"], unique=False)
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('viewer', 'controller', 'ops', 'admin')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )


def downgrade() -> None:
    op.drop_table("users")
    op.drop_table("threshold_changes")
    op.drop_table("risk_snapshots")
    op.drop_table("customer_positions")
