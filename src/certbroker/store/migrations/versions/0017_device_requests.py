"""Device requests: every CSR a client sent, accepted, awaiting approval or denied.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.Integer, nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("challenge", sa.String(20), nullable=False),
        sa.Column("csr_pem", sa.Text, nullable=False),
        sa.Column("state", sa.String(30), nullable=False),
        sa.Column("certificate_id", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_device_requests_client_id", "device_requests", ["client_id"])
    op.create_index("ix_device_requests_state", "device_requests", ["state"])


def downgrade() -> None:
    op.drop_table("device_requests")
