"""Self-healing: when a failing certificate is tried again, and whether a person has
stopped that (`cert disable`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certbroker.store.schema import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("next_try_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("disabled", sa.Boolean, nullable=False, server_default="0"))
    op.create_index("ix_certificates_next_try_at", "certificates", ["next_try_at"])
    # Certificates given up before (a renewal stopped after a permanent error, a first
    # issuance that failed) are tried again from now on.
    op.execute(
        "UPDATE certificates SET next_try_at = CURRENT_TIMESTAMP, renewal_reason = NULL "
        "WHERE renewal_reason = 'stopped'"
    )
    op.execute("UPDATE certificates SET next_try_at = CURRENT_TIMESTAMP WHERE status = 'failed'")


def downgrade() -> None:
    op.drop_index("ix_certificates_next_try_at", "certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("disabled")
        batch.drop_column("next_try_at")
