"""CA fallback: a certificate's further accounts, tried in order when one fails, and the
account each order went to.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("fallback_account_ids", sa.Text, nullable=True))
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("account_id", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("account_id")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("fallback_account_ids")
