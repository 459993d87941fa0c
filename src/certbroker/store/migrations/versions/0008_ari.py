"""ARI (RFC 9773): the certificate a renewal order replaces, and when to ask the CA for a
certificate's renewal window again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("replaces", sa.Text, nullable=True))
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("ari_next_check", UTCDateTime, nullable=True))
    op.create_index("ix_certificates_ari_next_check", "certificates", ["ari_next_check"])


def downgrade() -> None:
    op.drop_index("ix_certificates_ari_next_check", "certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("ari_next_check")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("replaces")
