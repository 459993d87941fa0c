"""certificates (status, renew_at): the scheduler's look for due certificates reads only
the due rows (with `status` alone, SQLite scanned every valid certificate and sorted).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_certificates_status_renew_at", "certificates", ["status", "renew_at"])
    op.drop_index("ix_certificates_status", "certificates")


def downgrade() -> None:
    op.create_index("ix_certificates_status", "certificates", ["status"])
    op.drop_index("ix_certificates_status_renew_at", "certificates")
