"""`orders.taken_over`: whether the current holder took the order from one that never let it
go (died, or its lease ran out), set by the claim itself. Only then may the previous holder
have created an order at the CA and died before recording it, so only then does a worker
ask the CA for the account's orders (`OrderRun._orphan`). It used to ask whenever an order
had been started before, which is every `cert request --wait` and every retry; step-ca
answers that question by emptying its record of the account's orders when none is pending,
and refuses every later new-order of that account (serverInternal).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite takes one with a constant default): a batch would rebuild
    # `orders` from its reflection, which cannot read SQLite's expression index on
    # `certificates` and says so on every new store.
    op.add_column(
        "orders", sa.Column("taken_over", sa.Boolean, nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("taken_over")
