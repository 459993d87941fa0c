"""Clients: devices, gateways, load balancers and servers that obtain certificates for
themselves, each with a token (kept as SHA-256) and an allow-list of names.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("token_prefix", sa.String(20), nullable=False),
        sa.Column("allow", sa.Text, nullable=False, server_default="[]"),
        sa.Column("wildcard", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("policy", sa.String(20), nullable=False, server_default="deny"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("token_rotated_at", UTCDateTime, nullable=False),
        sa.Column("last_seen_at", UTCDateTime, nullable=True),
        sa.Column("last_seen_from", sa.String(100), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("clients")
