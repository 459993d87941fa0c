"""Clients and their tokens (SHA-256 only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.clients import Client, ClientPolicy, DeviceRequest, RequestState
from certbroker.domain.errors import NotFoundError, UsageError
from certbroker.domain.models import NewCertificate
from certbroker.store.base import StoreBase
from certbroker.store.rows import insert_certificate, new_id
from certbroker.store.schema import clients, device_requests

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


def _request(row: Row[Any]) -> DeviceRequest:
    return DeviceRequest(
        id=row.id,
        client_id=row.client_id,
        names=tuple(json.loads(row.names)),
        challenge=row.challenge,
        state=RequestState(row.state),
        created_at=row.created_at,
        certificate_id=row.certificate_id,
        reason=row.reason,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
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

    # -- device requests -----------------------------------------------------------------

    def add_device_request(
        self,
        *,
        client_id: int,
        names: Sequence[str],
        challenge: str,
        csr_pem: str,
        now: datetime,
        certificate: NewCertificate | None,
        lease_until: datetime,
    ) -> DeviceRequest:
        """The request, and with `certificate` (accepted at once) the certificate and its
        first order, in one transaction; without, it waits for an admin's approval."""
        with self._write() as conn:
            cert_id = None
            if certificate is not None:
                cert_id, _ = insert_certificate(conn, certificate, now, None, lease_until)
            request_id = new_id(
                conn.execute(
                    insert(device_requests).values(
                        client_id=client_id,
                        names=json.dumps(list(names)),
                        challenge=challenge,
                        csr_pem=csr_pem,
                        state=(
                            RequestState.ACCEPTED if cert_id else RequestState.AWAITING_APPROVAL
                        ).value,
                        certificate_id=cert_id,
                        created_at=now,
                    )
                )
            )
        return self.get_device_request(request_id)

    def get_device_request(self, request_id: int) -> DeviceRequest:
        with self._read() as conn:
            row = conn.execute(
                select(device_requests).where(device_requests.c.id == request_id)
            ).first()
        if row is None:
            raise NotFoundError(f"no CSR request with ID {request_id}")
        return _request(row)

    def device_request_csr(self, request_id: int) -> str:
        with self._read() as conn:
            value = conn.execute(
                select(device_requests.c.csr_pem).where(device_requests.c.id == request_id)
            ).scalar_one()
        return str(value)

    def list_device_requests(self, state: RequestState | None = None) -> list[DeviceRequest]:
        query = select(device_requests).order_by(device_requests.c.id)
        if state is not None:
            query = query.where(device_requests.c.state == state.value)
        with self._read() as conn:
            return [_request(r) for r in conn.execute(query)]

    def decide_device_request(
        self,
        request_id: int,
        *,
        by: str,
        now: datetime,
        certificate: NewCertificate | None,
        reason: str | None,
        lease_until: datetime,
    ) -> DeviceRequest:
        """Approve (with the certificate to obtain) or deny (with a reason) a request that
        waits; refused once it was decided, so a denial is final and an approval is
        carried out once."""
        r = device_requests.c
        with self._write() as conn:
            state = conn.execute(select(r.state).where(r.id == request_id)).scalar_one_or_none()
            if state is None:
                raise NotFoundError(f"no CSR request with ID {request_id}")
            if state != RequestState.AWAITING_APPROVAL.value:
                raise UsageError(
                    f"CSR request {request_id} was decided already ({state}); a client sends "
                    "a new CSR to ask again"
                )
            cert_id = None
            if certificate is not None:
                cert_id, _ = insert_certificate(conn, certificate, now, None, lease_until)
            conn.execute(
                update(device_requests)
                .where(and_(r.id == request_id, r.state == RequestState.AWAITING_APPROVAL.value))
                .values(
                    state=(RequestState.ACCEPTED if cert_id else RequestState.DENIED).value,
                    certificate_id=cert_id,
                    reason=reason,
                    decided_by=by,
                    decided_at=now,
                    csr_pem="" if cert_id is None else r.csr_pem,
                )
            )
        return self.get_device_request(request_id)
