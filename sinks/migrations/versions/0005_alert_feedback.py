"""Reviewer feedback on alerts: the features an alert was raised with, and the model's estimate.

* ``alerts.feedback`` (JSON): ``{"confirm_probability", "verdicts_learned",
  "features"}`` as ``pipeline.feedback.FeedbackModel.annotate`` put them on the
  alert's latest revision; a verdict is learned on these features.
* ``alerts.confirm_probability`` (+ index with ``status``): the estimate that a
  reviewer confirms the alert, null until the model has learned enough
  verdicts; reviewers sort open alerts by it.
* ``alert_history (change, to_status, id)``: workers follow new verdicts by id.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Plain ALTER TABLE on both dialects: a batch copy of ``alerts`` cannot copy its generated column on SQLite.
    op.add_column("alerts", sa.Column("feedback", JSONType, nullable=True))
    op.add_column("alerts", sa.Column("confirm_probability", sa.Float(), nullable=True))
    op.create_index("ix_alerts_status_confirm_probability", "alerts", ["status", "confirm_probability"])
    op.create_index("ix_alert_history_change_to_status_id", "alert_history", ["change", "to_status", "id"])


def downgrade() -> None:
    op.drop_index("ix_alert_history_change_to_status_id", table_name="alert_history")
    op.drop_index("ix_alerts_status_confirm_probability", table_name="alerts")
    op.drop_column("alerts", "confirm_probability")  # SQLite >= 3.35 drops columns in place
    op.drop_column("alerts", "feedback")
