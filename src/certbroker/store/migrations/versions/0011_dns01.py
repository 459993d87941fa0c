"""DNS-01: DNS accounts, the zones they are the default for, the TXT records written, the
DNS account (or manual mode) of a certificate, and the order state awaiting-dns.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ACTIVE_BEFORE = "state IN ('queued', 'ordered', 'presented', 'answered', 'finalizing')"
_ACTIVE_AFTER = (
    "state IN ('queued', 'ordered', 'presented', 'awaiting-dns', 'answered', 'finalizing')"
)
_INDEX = "ux_orders_one_active_per_certificate"


def _one_active_order(where: str) -> None:
    op.drop_index(_INDEX, "orders")
    op.create_index(
        _INDEX,
        "orders",
        ["certificate_id"],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    op.create_table(
        "dns_accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("secrets_sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "dns_zones",
        sa.Column("zone", sa.String(255), primary_key=True),
        sa.Column("dns_account_id", sa.Integer, sa.ForeignKey("dns_accounts.id"), nullable=False),
    )
    op.create_table(
        "dns_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.Integer, nullable=False),
        sa.Column("identifier", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("dns_account_id", sa.Integer, nullable=True),
        sa.Column("written", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("cleanup_error", sa.Text, nullable=True),
        sa.Column("cleanup_after", UTCDateTime, nullable=True),
    )
    op.create_index("ix_dns_records_order_id", "dns_records", ["order_id"])
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("dns_account_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("dns_manual", sa.Boolean, nullable=False, server_default="0"))
    _one_active_order(_ACTIVE_AFTER)


def downgrade() -> None:
    _one_active_order(_ACTIVE_BEFORE)
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("dns_manual")
        batch.drop_column("dns_account_id")
    op.drop_index("ix_dns_records_order_id", "dns_records")
    op.drop_table("dns_records")
    op.drop_table("dns_zones")
    op.drop_table("dns_accounts")
