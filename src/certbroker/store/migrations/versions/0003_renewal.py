"""Renewal: the policy and plan on certificates, renewal orders, certificate history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

# The active states as they were at this revision (0011 adds awaiting-dns).
ACTIVE_STATES_SQL = "state IN ('queued', 'ordered', 'presented', 'answered', 'finalizing')"

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("renew_before_days", sa.Float, nullable=True))
        batch.add_column(sa.Column("renewal_reason", sa.String(40), nullable=True))
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column("purpose", sa.String(20), nullable=False, server_default="issue")
        )
        batch.add_column(sa.Column("key_sealed", sa.LargeBinary, nullable=True))
    op.create_index(
        "ux_orders_one_active_per_certificate",
        "orders",
        ["certificate_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE_STATES_SQL),
        postgresql_where=sa.text(ACTIVE_STATES_SQL),
    )
    op.create_table(
        "certificate_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("certificate_id", sa.Integer, sa.ForeignKey("certificates.id"), nullable=False),
        sa.Column("serial", sa.String(80), nullable=False),
        sa.Column("issuer", sa.Text, nullable=True),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.Column("fingerprint_sha256", sa.String(100), nullable=True),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.Column("chain_pem", sa.Text, nullable=True),
        sa.Column("key_sealed", sa.LargeBinary, nullable=True),
        sa.Column("order_url", sa.Text, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("replaced_at", UTCDateTime, nullable=False),
        sa.Column("replaced_because", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_certificate_history_certificate_id", "certificate_history", ["certificate_id"]
    )


def downgrade() -> None:
    op.drop_table("certificate_history")
    op.drop_index("ux_orders_one_active_per_certificate", "orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("key_sealed")
        batch.drop_column("purpose")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("renewal_reason")
        batch.drop_column("renew_before_days")
