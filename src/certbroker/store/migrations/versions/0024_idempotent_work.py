"""Several nodes (issue 17): `idempotency_keys.work_done` names what the first request
did ("certificate:ID:ORDER"), written in the transaction that did it, so a retry through
another node after the first one died answers it instead of doing it again.
`orders.abandoned_url`: the order URL `cert verify --new-challenge` gave up, so a worker
looking for an order a dead holder made at the CA never takes it back.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("work_done", sa.String(100), nullable=True))
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("abandoned_url", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("abandoned_url")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("work_done")
