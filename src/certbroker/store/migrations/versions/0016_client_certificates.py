"""A certificate's client, and the CSR of a device that keeps its key.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("client_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("csr_pem", sa.Text, nullable=True))
    op.create_index("ix_certificates_client_id", "certificates", ["client_id"])


def downgrade() -> None:
    op.drop_index("ix_certificates_client_id", "certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("csr_pem")
        batch.drop_column("client_id")
