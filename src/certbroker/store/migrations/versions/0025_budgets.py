"""Rate-limit budgets (issue 17): `budget_spends`, one row per new order sent to a CA for
each scope it counts against (the account, each registered domain of its names), so
every process and node counts the same; `budget_blocks`, a scope the CA itself said to
leave alone until a time (a rateLimited answer's Retry-After).

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_spends",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ca", sa.String(300), nullable=False),
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("order_id", sa.Integer, nullable=True),
    )
    op.create_index("ix_budget_spends_scope", "budget_spends", ["ca", "scope", "at"])
    op.create_table(
        "budget_blocks",
        sa.Column("ca", sa.String(300), primary_key=True),
        sa.Column("scope", sa.String(300), primary_key=True),
        sa.Column("until", UTCDateTime, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_blocks")
    op.drop_index("ix_budget_spends_scope", table_name="budget_spends")
    op.drop_table("budget_spends")
