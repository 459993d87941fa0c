"""Push targets.

- `targets`: a directory here (`local`) or on SSH hosts, the files wanted there, the
  reload command and the TLS server to verify; the SSH identity and the PKCS#12
  password sealed, the known_hosts lines in clear.
- `certificate_targets`: which certificate goes to which target.
- `deployments`: one serial to one target, its state, attempts, next try, lease, last
  error, the reload's output and the alarm.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("hosts", sa.Text, nullable=False, server_default="[]"),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("reload", sa.Text, nullable=True),
        sa.Column("verify", sa.String(300), nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("known_hosts", sa.Text, nullable=True),
        sa.Column("identity_sealed", sa.LargeBinary, nullable=True),
        sa.Column("pkcs12_password_sealed", sa.LargeBinary, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "certificate_targets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "certificate_id",
            sa.Integer,
            sa.ForeignKey("certificates.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "target_id", sa.Integer, sa.ForeignKey("targets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ux_certificate_targets_pair",
        "certificate_targets",
        ["certificate_id", "target_id"],
        unique=True,
    )
    op.create_index("ix_certificate_targets_target_id", "certificate_targets", ["target_id"])
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "certificate_id",
            sa.Integer,
            sa.ForeignKey("certificates.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "target_id", sa.Integer, sa.ForeignKey("targets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("serial", sa.String(100), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try_at", UTCDateTime, nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("output_tail", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("alarm_since", UTCDateTime, nullable=True),
    )
    op.create_index("ix_deployments_due", "deployments", ["state", "next_try_at"])
    op.create_index(
        "ix_deployments_certificate_target", "deployments", ["certificate_id", "target_id"]
    )


def downgrade() -> None:
    op.drop_table("deployments")
    op.drop_table("certificate_targets")
    op.drop_table("targets")
