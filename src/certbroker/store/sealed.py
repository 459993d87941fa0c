"""Every secret the store holds sealed with the master key, for `rotate-master-key`: read
in batches by ID, and each replaced only if it is still the value that was read (a
process that changed it meanwhile wins; the next pass looks at it again)."""

from __future__ import annotations

from sqlalchemy import Column, Table, select, update

from certbroker.store.base import StoreBase
from certbroker.store.schema import (
    accounts,
    certificate_history,
    certificates,
    dns_accounts,
    orders,
    runtime_settings,
    targets,
    webhooks,
)

SEALED: tuple[tuple[Table, str], ...] = (
    (accounts, "key_sealed"),
    (accounts, "next_key_sealed"),
    (certificates, "key_sealed"),
    (certificates, "keystore_password_sealed"),
    (orders, "key_sealed"),
    (certificate_history, "key_sealed"),
    (dns_accounts, "secrets_sealed"),
    (targets, "identity_sealed"),
    (targets, "pkcs12_password_sealed"),
    (webhooks, "secret_sealed"),
)


def _place(which: int) -> tuple[Table, Column[bytes], Column[int]]:
    table, name = SEALED[which]
    return table, table.c[name], table.c["id"]


class SealedStore(StoreBase):
    def sealed_values(self, which: int, after_id: int, limit: int) -> list[tuple[int, bytes]]:
        """(ID, sealed value) of SEALED[which], the next `limit` after `after_id`."""
        _table, column, key = _place(which)
        with self._read() as conn:
            rows = conn.execute(
                select(key, column)
                .where(key > after_id, column.is_not(None))
                .order_by(key)
                .limit(limit)
            ).all()
        return [(int(row[0]), bytes(row[1])) for row in rows]

    def replace_sealed(self, which: int, row_id: int, old: bytes, new: bytes) -> bool:
        table, column, key = _place(which)
        with self._write() as conn:
            changed = conn.execute(
                update(table).where(key == row_id, column == old).values({column.name: new})
            ).rowcount
        return bool(changed)

    def replace_setting(self, name: str, old: str, new: str) -> bool:
        """A runtime setting changed only if it still holds `old`."""
        c = runtime_settings.c
        with self._write() as conn:
            changed = conn.execute(
                update(runtime_settings).where(c.name == name, c.value == old).values(value=new)
            ).rowcount
        return bool(changed)
