"""Clients and their tokens (SHA-256 only)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.clients import (
    Client,
    ClientPolicy,
    DeviceRequest,
    Renewal,
    Renewing,
    RequestState,
)
from certbroker.domain.errors import Conflict, NotFoundError, UsageError
from certbroker.domain.models import (
    ACTIVE_ORDER_STATES,
    Certificate,
    CertificateStatus,
    ChallengeType,
    EventKind,
    NewCertificate,
    OrderPurpose,
)
from certbroker.store.base import StoreBase
from certbroker.store.rows import (
    CERT_COLUMNS,
    certificate_row,
    insert_certificate,
    new_id,
    queued_order,
)
from certbroker.store.schema import (
    certificates,
    challenge_acks,
    clients,
    device_requests,
    events,
    installations,
    orders,
)

SEEN_TOUCH = timedelta(seconds=60)  # last seen written at most this often


@dataclass(frozen=True)
class ClientLoad:
    """What a client holds and has under way, as its limits count it."""

    certificates: int  # made for it (its client_id), in any state; a deleted one is gone
    obtaining: int  # of those, the ones with an order under way (a first one or a renewal)
    awaiting: int  # its CSR requests waiting for an admin's approval


def _load(conn: Connection, client_id: int) -> ClientLoad:
    c, o, r = certificates.c, orders.c, device_requests.c
    mine = c.client_id == client_id
    held = conn.execute(select(func.count()).select_from(certificates).where(mine)).scalar()
    under_way = conn.execute(
        select(func.count(func.distinct(o.certificate_id)))
        .select_from(orders.join(certificates, c.id == o.certificate_id))
        .where(and_(mine, o.state.in_(ACTIVE_ORDER_STATES)))
    ).scalar()
    awaiting = conn.execute(
        select(func.count())
        .select_from(device_requests)
        .where(and_(r.client_id == client_id, r.state == RequestState.AWAITING_APPROVAL.value))
    ).scalar()
    return ClientLoad(int(held or 0), int(under_way or 0), int(awaiting or 0))


def client_row(row: Row[Any]) -> Client:
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
        account_id=row.account_id,
        renewal=Renewal(row.renewal),
        agent_at=row.agent_at,
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
        renewal=Renewal(row.renewal) if row.renewal else None,
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
        account_id: int | None = None,
        renewal: Renewal = Renewal.DEVICE,
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
                            account_id=account_id,
                            renewal=renewal.value,
                        )
                    )
                )
        except IntegrityError:
            raise UsageError(f"a client named {name!r} already exists") from None
        return self.get_client(client_id)

    def clients_by_id(self, ids: Sequence[int]) -> dict[int, Client]:
        """The clients with these ids as they are now (a deleted one is missing)."""
        if not ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(select(clients).where(clients.c.id.in_(sorted(set(ids)))))
            return {row.id: client_row(row) for row in rows}

    def get_client(self, ref: str | int) -> Client:
        column = clients.c.id if isinstance(ref, int) else clients.c.name
        with self._read() as conn:
            row = conn.execute(select(clients).where(column == ref)).first()
        if row is None:
            raise NotFoundError(f"no client {ref!r}; see `certbroker client list`")
        return client_row(row)

    def client_by_token_hash(self, token_hash: str) -> Client | None:
        with self._read() as conn:
            row = conn.execute(select(clients).where(clients.c.token_hash == token_hash)).first()
        return None if row is None else client_row(row)

    def list_clients(self) -> list[Client]:
        with self._read() as conn:
            return [client_row(r) for r in conn.execute(select(clients).order_by(clients.c.name))]

    def change_client(self, client_id: int, now: datetime, **values: Any) -> Client:
        """Set `allow` (a list), `wildcard`, `policy`, `enabled`, `account_id`, `renewal`,
        or a new `token_hash` with its `token_prefix`."""
        if "allow" in values:
            values["allow"] = json.dumps(list(values["allow"]))
        if "policy" in values:
            values["policy"] = ClientPolicy(values["policy"]).value
        if "renewal" in values:
            values["renewal"] = Renewal(values["renewal"]).value
        if "token_hash" in values:
            values["token_rotated_at"] = now
        with self._write() as conn:
            done = conn.execute(
                update(clients).where(clients.c.id == client_id).values(updated_at=now, **values)
            )
        if not done.rowcount:
            raise NotFoundError(f"no client with ID {client_id}")
        return self.get_client(client_id)

    def client_load(self, client_id: int) -> ClientLoad:
        """What the client holds and has under way now (see ClientLoad)."""
        with self._read() as conn:
            return _load(conn, client_id)

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
        """The client and what points at it, in one transaction: its agent's installations,
        its devices' requests, its acknowledged challenge tokens. Its certificates stay
        (keys, history, exports) but are no one's and disabled, so nothing renews or
        delivers them for a client that is gone (`cert enable` takes one back); its id is
        never given to another (migration 0027)."""
        with self._write() as conn:
            for table in (installations, device_requests, challenge_acks):
                conn.execute(delete(table).where(table.c.client_id == client_id))
            conn.execute(
                update(certificates)
                .where(certificates.c.client_id == client_id)
                .values(client_id=None, disabled=True)
            )
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
        renewing: Renewing | None = None,
        renewal: Renewal | None = None,
        admit: Callable[[ClientLoad], None] | None = None,
    ) -> DeviceRequest:
        """The request, and with `certificate` (accepted at once) the certificate and its
        first order, or with `renewing` the renewal of the client's certificate for
        these names, in one transaction; with neither it waits for an admin's approval.

        `admit`: given the client's load as it is in this transaction, raises to refuse
        the request (its limits); nothing is written then. The client's row is locked
        first (PostgreSQL; SQLite has one writer at a time), so two requests of one
        client at once are counted one after the other."""
        with self._write() as conn:
            if admit is not None:
                conn.execute(
                    select(clients.c.id).where(clients.c.id == client_id).with_for_update()
                )
                admit(_load(conn, client_id))
            cert_id = self._accept(conn, certificate, renewing, now, lease_until)
            request_id = new_id(
                conn.execute(
                    insert(device_requests),
                    dict(
                        client_id=client_id,
                        names=json.dumps(list(names)),
                        challenge=challenge,
                        csr_pem=csr_pem,
                        state=(
                            RequestState.ACCEPTED if cert_id else RequestState.AWAITING_APPROVAL
                        ).value,
                        certificate_id=cert_id,
                        created_at=now,
                        renewal=renewal.value if renewal else None,
                    ),
                )
            )
            if cert_id is not None:
                _supersede(conn, cert_id, request_id)
        return self.get_device_request(request_id)

    @staticmethod
    def _accept(
        conn: Connection,
        certificate: NewCertificate | None,
        renewing: Renewing | None,
        now: datetime,
        lease_until: datetime,
    ) -> int | None:
        """The certificate a request is accepted for: a new one, or the one it renews."""
        if certificate is not None:
            cert_id, _ = insert_certificate(conn, certificate, now, None, lease_until)
            return cert_id
        if renewing is None:
            return None
        c = certificates.c
        values: dict[str, object] = {"device_renews": renewing.device_renews, "updated_at": now}
        if renewing.csr_pem is not None:  # a new key, or due: the CA is asked
            active = conn.execute(
                select(orders.c.id).where(
                    and_(
                        orders.c.certificate_id == renewing.certificate_id,
                        orders.c.state.in_(ACTIVE_ORDER_STATES),
                    )
                )
            ).first()
            if active is not None:
                raise Conflict(
                    f"certificate {renewing.certificate_id} for these names is being renewed "
                    f"already (order {active.id}); send the CSR again once that has ended"
                )
            values["next_csr_pem"] = renewing.csr_pem
            conn.execute(
                insert(orders).values(
                    queued_order(renewing.certificate_id, OrderPurpose.RENEW, now)
                )
            )
            conn.execute(
                insert(events).values(
                    at=now,
                    kind=EventKind.RENEWAL_QUEUED.value,
                    message="renewal asked for by the device: a fresh CSR",
                    certificate_id=renewing.certificate_id,
                )
            )
        conn.execute(update(certificates).where(c.id == renewing.certificate_id).values(values))
        return renewing.certificate_id

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

    def client_device_requests(self, client_id: int, limit: int) -> list[DeviceRequest]:
        r = device_requests.c
        query = select(device_requests).where(r.client_id == client_id)
        with self._read() as conn:
            return [_request(row) for row in conn.execute(query.order_by(r.id.desc()).limit(limit))]

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
        renewing: Renewing | None = None,
    ) -> DeviceRequest:
        """Approve (with the certificate to obtain, or the one to renew) or deny (with a
        reason) a request that waits; refused once it was decided, so a denial is final
        and an approval is carried out once."""
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
            cert_id = self._accept(conn, certificate, renewing, now, lease_until)
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
            if cert_id is not None:
                _supersede(conn, cert_id, request_id)
        return self.get_device_request(request_id)

    # -- a client's certificates ----------------------------------------------------------

    def client_certificates(self, client_id: int) -> list[Certificate]:
        """Its certificates, newest first (deleted ones are gone)."""
        c = certificates.c
        with self._read() as conn:
            return [
                certificate_row(r)
                for r in conn.execute(
                    select(*CERT_COLUMNS).where(c.client_id == client_id).order_by(c.id.desc())
                )
            ]

    def certificate_to_renew(
        self,
        client_id: int,
        names: Sequence[str],
        challenge: ChallengeType,
        *,
        issued: bool = True,
    ) -> Certificate | None:
        """The client's issued, unrevoked certificate for exactly these names (in any
        order) and challenge, the latest to expire: what a fresh CSR for them renews.
        `issued=False`: its certificate for them that was never issued yet (being
        obtained, or failing and tried again), not disabled."""
        current, first = self.certificates_for(client_id, names, challenge)
        return current if issued else first

    def certificates_for(
        self, client_id: int, names: Sequence[str], challenge: ChallengeType
    ) -> tuple[Certificate | None, Certificate | None]:
        """In one look: the client's issued certificate for exactly these names (see
        certificate_to_renew), and its one never issued yet."""
        c = certificates.c
        wanted = sorted(names)
        with self._read() as conn:
            rows = conn.execute(
                select(*CERT_COLUMNS).where(
                    and_(
                        c.client_id == client_id,
                        c.challenge == challenge.value,
                        c.status.in_(
                            [
                                CertificateStatus.VALID.value,
                                CertificateStatus.PENDING.value,
                                CertificateStatus.FAILED.value,
                            ]
                        ),
                        # Only rows naming the first of them are read (and compared below).
                        c.names.contains(json.dumps(wanted[0]), autoescape=True),
                    )
                )
            ).all()
        found = [certificate_row(r) for r in rows if sorted(json.loads(r.names)) == wanted]
        issued = [
            cert
            for cert in found
            if cert.status is CertificateStatus.VALID and cert.cert_pem is not None
        ]
        first = [cert for cert in found if cert.cert_pem is None and not cert.disabled]
        return (
            max(
                issued, key=lambda cert: (cert.not_after or cert.created_at, cert.id), default=None
            ),
            max(first, key=lambda cert: cert.id, default=None),
        )


def _supersede(conn: Connection, cert_id: int, request_id: int) -> None:
    """Earlier accepted requests for the certificate a new one renews are done with."""
    r = device_requests.c
    conn.execute(
        update(device_requests)
        .where(
            and_(
                r.certificate_id == cert_id,
                r.id != request_id,
                r.state == RequestState.ACCEPTED.value,
            )
        )
        .values(state=RequestState.SUPERSEDED.value)
    )
