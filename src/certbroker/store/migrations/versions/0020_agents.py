"""Gateway agents (issue 15).

- `clients.agent_at`: when an agent of this client was last connected (kept fresh about
  once a minute while it is): the agents HTTP-01 tokens wait for.
- `challenge_acks`: which client's agent answers which agent-http-01 token now.
- `installations`: per client and certificate, what its agent installed (serial, when,
  the reload's exit status and output), whether the broker holds the key, and the alarm
  of a failed install or of drift.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("agent_at", UTCDateTime, nullable=True))
    op.create_table(
        "challenge_acks",
        sa.Column("token", sa.String(200), primary_key=True),
        sa.Column("client_id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "installations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.Integer, nullable=False),
        sa.Column("certificate_id", sa.Integer, nullable=False),
        sa.Column("key_mode", sa.String(10), nullable=False),
        sa.Column("serial", sa.String(80), nullable=True),
        sa.Column("not_after", UTCDateTime, nullable=True),
        sa.Column("installed_at", UTCDateTime, nullable=True),
        sa.Column("reload_status", sa.Integer, nullable=True),
        sa.Column("output_tail", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("alarm_since", UTCDateTime, nullable=True),
        sa.Column("reported_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ux_installations_client_cert",
        "installations",
        ["client_id", "certificate_id"],
        unique=True,
    )
    op.create_index("ix_installations_certificate_id", "installations", ["certificate_id"])


def downgrade() -> None:
    op.drop_table("installations")
    op.drop_table("challenge_acks")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("agent_at")
