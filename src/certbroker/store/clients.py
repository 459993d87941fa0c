"""Clients and their tokens (SHA-256 only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.clients import Client, ClientPolicy
from certbroker.domain.errors import NotFoundError, UsageError
from certbroker.store.base import StoreBase
from certbroker.store.rows import new_id
from certbroker.store.schema import clients

SEEN_TOUCH = timedelta(seconds=60)  # last seen written at most this often


def _client(row: Row[Any]) -> Client:
    return Client(
        id=row.id,
        name=row.name,
        allow=tuple(json.loads(row.allow)),
        wildcard=bool(row.wildcard),
        policy=ClientPolicy(row.policy),
        enabled=bool(row.enabled),
        token_prefix=row.token_prefix,
        created_at=row.created_at,
        token_rotated_at=row.token_rotated_at,
        last_seen_at=row.last_seen_at,
        last_seen_from=row.last_seen_from,
    )


class ClientStore(StoreBase):
    def add_client(
        self,
        *,
        name: str,
        token_hash: str,
        token_prefix: str,
        allow: Sequence[str],
        wildcard: bool,
        policy: ClientPolicy,
        now: datetime,
    ) -> Client:
        try:
            with self._write() as conn:
                client_id = new_id(
                    conn.execute(
                        insert(clients).values(
                            name=name,
                            token_hash=token_hash,
                            token_prefix=token_prefix,
                            allow=json.dumps(list(allow)),
                            wildcard=wildcard,
                            policy=policy.value,
                            enabled=True,
                            created_at=now,
                            updated_at=now,
                            token_rotated_at=now,
                        )
                    )
                )
        except IntegrityError:
            raise UsageError(f"a client named {name!r} already exists") from None
        return self.get_client(client_id)

    def get_client(self, ref: str | int) -> Client:
        column = clients.c.id if isinstance(ref, int) else clients.c.name
        with self._read() as conn:
            row = conn.execute(select(clients).where(column == ref)).first()
        if row is None:
            raise NotFoundError(f"no client {ref!r}; see `certbroker client list`")
        return _client(row)

    def client_by_token_hash(self, token_hash: str) -> Client | None:
        with self._read() as conn:
            row = conn.execute(select(clients).where(clients.c.token_hash == token_hash)).first()
        return None if row is None else _client(row)

    def list_clients(self) -> list[Client]:
        with self._read() as conn:
            return [_client(r) for r in conn.execute(select(clients).order_by(clients.c.name))]

    def change_client(self, client_id: int, now: datetime, **values: Any) -> Client:
        """Set `allow` (a list), `wildcard`, `policy`, `enabled`, or a new `token_hash`
        with its `token_prefix`."""
        if "allow" in values:
            values["allow"] = json.dumps(list(values["allow"]))
        if "policy" in values:
            values["policy"] = ClientPolicy(values["policy"]).value
        if "token_hash" in values:
            values["token_rotated_at"] = now
        with self._write() as conn:
            done = conn.execute(
                update(clients).where(clients.c.id == client_id).values(updated_at=now, **values)
            )
        if not done.rowcount:
            raise NotFoundError(f"no client with ID {client_id}")
        return self.get_client(client_id)

    def client_seen(self, client: Client, now: datetime, address: str) -> None:
        if (
            client.last_seen_at is not None
            and now - client.last_seen_at < SEEN_TOUCH
            and client.last_seen_from == address
        ):
            return
        with self._write() as conn:
            conn.execute(
                update(clients)
                .where(clients.c.id == client.id)
                .values(last_seen_at=now, last_seen_from=address[:100])
            )

    def delete_client(self, client_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(clients).where(clients.c.id == client_id))
