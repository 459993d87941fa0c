"""Events (every failed attempt, every issuance, alarms raised and cleared) and the alarm
state on certificates.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("certificate_id", sa.Integer, nullable=True),
        sa.Column("order_id", sa.Integer, nullable=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("problem", sa.Text, nullable=True),
    )
    op.create_index("ix_events_certificate_id", "events", ["certificate_id", "id"])
    op.create_index("ix_events_at", "events", ["at"])
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("alarm_since", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("alarm_message", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("alarm_message")
        batch.drop_column("alarm_since")
    op.drop_table("events")
