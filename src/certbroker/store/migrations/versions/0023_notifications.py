"""Mail notifications and metrics (issue 16).

- `certificates.notify_to`: the certificate's own mail recipients (JSON list; empty: the
  global list, else its ACME account's contacts).
- `certificates.alarm_kind`, `alarm_ack_until`, `alarm_ack_by`, `alarm_ack_reason`: the
  kind of failure the alarm is about, and a person's acknowledgement muting it until a date
  (a new kind of failure raises it again).
- `expiry_warnings`: one row per certificate, not-after and threshold (days) warned about;
  its primary key is what makes each warning go out once, whichever node looks.
- `mail_deliveries`: one mail to one recipient for one event (or a digest), sent under a
  lease, retried with backoff, `dead` after a day.
- `acme_request_stats`: the ACME request-duration histogram, summed over every process and
  node, per CA host, method and status.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-30
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("notify_to", sa.Text, nullable=True))
        batch.add_column(sa.Column("alarm_kind", sa.String(200), nullable=True))
        batch.add_column(sa.Column("alarm_ack_until", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("alarm_ack_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("alarm_ack_reason", sa.Text, nullable=True))
    op.create_table(
        "expiry_warnings",
        sa.Column("certificate_id", sa.Integer, primary_key=True),
        sa.Column("not_after", UTCDateTime, primary_key=True),
        sa.Column("threshold", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "mail_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Integer, nullable=True),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try_at", UTCDateTime, nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime, nullable=True),
    )
    op.create_index(
        "ux_mail_deliveries_event_recipient",
        "mail_deliveries",
        ["event_id", "recipient"],
        unique=True,
    )
    op.create_index("ix_mail_deliveries_state_next", "mail_deliveries", ["state", "next_try_at"])
    # Mail goes out for what happens from now on, not for the events already stored.
    bind = op.get_bind()
    last = bind.execute(sa.text("SELECT MAX(id) FROM events")).scalar()
    settings = sa.table(
        "runtime_settings",
        sa.column("name", sa.String),
        sa.column("value", sa.Text),
        sa.column("updated_at", UTCDateTime),
    )
    bind.execute(
        sa.insert(settings).values(
            name="mail-cursor", value=str(last or 0), updated_at=datetime.now(UTC)
        )
    )
    op.create_table(
        "acme_request_stats",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("method", sa.String(10), primary_key=True),
        sa.Column("status", sa.String(10), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("total", sa.Float, nullable=False),
        sa.Column("buckets", sa.Text, nullable=False),  # JSON: counts per bucket, not cumulative
    )


def downgrade() -> None:
    op.execute("DELETE FROM runtime_settings WHERE name = 'mail-cursor'")
    op.drop_table("acme_request_stats")
    op.drop_index("ix_mail_deliveries_state_next", "mail_deliveries")
    op.drop_index("ux_mail_deliveries_event_recipient", "mail_deliveries")
    op.drop_table("mail_deliveries")
    op.drop_table("expiry_warnings")
    with op.batch_alter_table("certificates") as batch:
        for column in ("alarm_ack_reason", "alarm_ack_by", "alarm_ack_until", "alarm_kind"):
            batch.drop_column(column)
        batch.drop_column("notify_to")
