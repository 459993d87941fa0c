"""Device renewal and clients' own ACME accounts.

- `clients.account_id`: the ACME account a client's certificates are ordered with
  (None: the only account there is); `clients.renewal`: who renews its certificates by
  default, `device` (it sends a fresh CSR) or `broker` (with the CSR on file).
- `certificates.device_renews`: the scheduler leaves it to the device;
  `certificates.next_csr_pem`: a device's fresh CSR, sent to the CA by the renewal
  orders until the certificate for it arrives (then it becomes `csr_pem`).
- `device_requests.renewal`: who the request asked to renew it (None: the client's
  setting), kept until an admin approves it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("account_id", sa.Integer, nullable=True))
        batch.add_column(
            sa.Column("renewal", sa.String(10), nullable=False, server_default="device")
        )
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("device_renews", sa.Boolean, nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_csr_pem", sa.Text, nullable=True))
    with op.batch_alter_table("device_requests") as batch:
        batch.add_column(sa.Column("renewal", sa.String(10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device_requests") as batch:
        batch.drop_column("renewal")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("next_csr_pem")
        batch.drop_column("device_renews")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("renewal")
        batch.drop_column("account_id")
