"""Accounts, certificates, orders and challenge tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("directory_url", sa.Text, nullable=False),
        sa.Column("ca_bundle", sa.Text, nullable=True),
        sa.Column("emails", sa.Text, nullable=False),
        sa.Column("key_type", sa.String(20), nullable=False),
        sa.Column("key_sealed", sa.LargeBinary, nullable=False),
        sa.Column("next_key_sealed", sa.LargeBinary, nullable=True),
        sa.Column("uri", sa.Text, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("terms_of_service", sa.Text, nullable=True),
        sa.Column("eab_kid", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("challenge", sa.String(20), nullable=False),
        sa.Column("key_type", sa.String(20), nullable=False),
        sa.Column("key_policy", sa.String(20), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("key_sealed", sa.LargeBinary, nullable=True),
        sa.Column("cert_pem", sa.Text, nullable=True),
        sa.Column("chain_pem", sa.Text, nullable=True),
        sa.Column("serial", sa.String(80), nullable=True),
        sa.Column("issuer", sa.Text, nullable=True),
        sa.Column("not_before", UTCDateTime, nullable=True),
        sa.Column("not_after", UTCDateTime, nullable=True),
        sa.Column("fingerprint_sha256", sa.String(100), nullable=True),
        sa.Column("order_url", sa.Text, nullable=True),
        sa.Column("revocation_reason", sa.String(40), nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("renew_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_certificates_status", "certificates", ["status"])
    op.create_index("ix_certificates_renew_at", "certificates", ["renew_at"])
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("certificate_id", sa.Integer, sa.ForeignKey("certificates.id"), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("order_url", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("next_run_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_orders_certificate_id", "orders", ["certificate_id"])
    op.create_index("ix_orders_state_next_run", "orders", ["state", "next_run_at"])
    op.create_table(
        "challenges",
        sa.Column("token", sa.String(200), primary_key=True),
        sa.Column("key_authorization", sa.Text, nullable=False),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id"), nullable=True),
        sa.Column("identifier", sa.String(255), nullable=False),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_challenges_order_id", "challenges", ["order_id"])


def downgrade() -> None:
    op.drop_table("challenges")
    op.drop_table("orders")
    op.drop_table("certificates")
    op.drop_table("accounts")
