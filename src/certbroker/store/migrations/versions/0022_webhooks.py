"""Webhooks (issue 16): endpoints, their signing secrets (sealed), deliveries with
retries and a dead-letter state.

- `webhooks`: URL, event groups, format, --allow-private, the signing secret sealed,
  enabled (a 410 Gone disables one), the last event before it was added.
- `webhook_deliveries`: one event to one webhook (unique pair), its message ID, state,
  attempts, next try, lease, the receiver's last status and answer, the payload as sent.
- `runtime_settings` `webhook-cursor`: the outbox's cursor over events.id, starting at
  the newest event now (no webhook exists yet, so nothing before it is owed).

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

CURSOR = "webhook-cursor"


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("format", sa.String(10), nullable=False),
        sa.Column("allow_private", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("after_event_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "webhook_id",
            sa.Integer,
            sa.ForeignKey("webhooks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_id", sa.Integer, nullable=True),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try_at", UTCDateTime, nullable=True),
        sa.Column("first_attempt_at", UTCDateTime, nullable=True),
        sa.Column("last_attempt_at", UTCDateTime, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_response", sa.Text, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("payload", sa.Text, nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
    )
    op.create_index(
        "ux_webhook_deliveries_pair",
        "webhook_deliveries",
        ["webhook_id", "event_id"],
        unique=True,
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_try_at"])
    op.create_index("ix_webhook_deliveries_webhook", "webhook_deliveries", ["webhook_id", "id"])
    bind = op.get_bind()
    newest = bind.execute(sa.text("SELECT MAX(id) FROM events")).scalar()
    settings = sa.table(
        "runtime_settings",
        sa.column("name", sa.String),
        sa.column("value", sa.Text),
        sa.column("updated_at", UTCDateTime),
    )
    bind.execute(sa.delete(settings).where(settings.c.name == CURSOR))
    bind.execute(
        sa.insert(settings).values(
            name=CURSOR, value=str(newest or 0), updated_at=datetime.now(UTC)
        )
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM runtime_settings WHERE name = :name").bindparams(name=CURSOR))
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
