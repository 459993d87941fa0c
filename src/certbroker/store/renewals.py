"""Renewal in the store: due certificates, renewal orders, and the arrival of a new
certificate (which moves the one it replaces into the history)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.errors import LeaseLost
from certbroker.domain.models import (
    ACTIVE_ORDER_STATES,
    Certificate,
    CertificateStatus,
    EventKind,
    IssuedCertificate,
    Order,
    OrderPurpose,
    OrderState,
    PastCertificate,
)
from certbroker.domain.renewal import RenewalPlan
from certbroker.store.events import EventStore, add_event, failed_attempt, succeeded
from certbroker.store.rows import CERT_COLUMNS, certificate_row, new_id, order_row, queued_order
from certbroker.store.schema import (
    certificate_history,
    certificates,
    challenges,
    device_requests,
    events,
    orders,
)
from certbroker.store.targets import queue_deployments

_no_active_order = ~exists().where(
    and_(
        orders.c.certificate_id == certificates.c.id,
        orders.c.state.in_(ACTIVE_ORDER_STATES),
    )
)


class RenewalStore(EventStore):
    # -- what is due ------------------------------------------------------------------------

    def enqueue_renewals(
        self, now: datetime, limit: int, *, cert_ids: list[int] | None = None
    ) -> list[int]:
        """Queue a renewal order for valid certificates whose `renew_at` has come (or for
        `cert_ids`, due or not) and that have no active order. Returns their IDs.

        Safe to run in several processes and nodes at once: on PostgreSQL each takes the
        due certificates no other holds (SKIP LOCKED), so the work is split; and the
        unique index on active orders lets only one renewal order per certificate in (a
        losing batch is retried at the next tick).
        """
        c = certificates.c
        if cert_ids is None:  # a failing one is due at its next_try_at (enqueue_retries)
            which = and_(
                c.renew_at <= now,
                c.next_try_at.is_(None),
                c.disabled.is_(False),
                c.device_renews.is_(False),  # its device sends a fresh CSR when due
            )
        else:
            which = c.id.in_(cert_ids)
        due = and_(c.status == CertificateStatus.VALID.value, _no_active_order, which)
        with self._write() as conn:
            ids = [
                row.id
                for row in conn.execute(
                    select(c.id)
                    .where(due)
                    .order_by(c.renew_at, c.id)
                    .limit(limit)
                    # Nodes ticking at once take disjoint batches (PostgreSQL); SQLite
                    # runs one writer at a time.
                    .with_for_update(of=certificates, skip_locked=True)
                )
            ]
            if ids:
                conn.execute(
                    insert(orders),
                    [queued_order(cert_id, OrderPurpose.RENEW, now) for cert_id in ids],
                )
                why = "renewal due" if cert_ids is None else "renewal forced"
                conn.execute(
                    insert(events),
                    [
                        {
                            "at": now,
                            "kind": EventKind.RENEWAL_QUEUED.value,
                            "message": why,
                            "certificate_id": cert_id,
                        }
                        for cert_id in ids
                    ],
                )
        return ids

    def enqueue_retries(self, now: datetime, limit: int) -> list[int]:
        """Queue the next order of failing certificates whose `next_try_at` has come and
        that have no active order and are not disabled: a renewal for one that was
        issued, a first issuance for one that never was. Returns their IDs."""
        c = certificates.c
        due = and_(c.next_try_at <= now, c.disabled.is_(False), _no_active_order)
        with self._write() as conn:
            rows = conn.execute(
                select(c.id, c.cert_pem.is_not(None).label("issued"))
                .where(due)
                .order_by(c.next_try_at, c.id)
                .limit(limit)
                .with_for_update(of=certificates, skip_locked=True)
            ).all()
            if rows:
                purpose = {True: OrderPurpose.RENEW, False: OrderPurpose.ISSUE}
                conn.execute(
                    insert(orders),
                    [queued_order(r.id, purpose[bool(r.issued)], now) for r in rows],
                )
                conn.execute(
                    insert(events),
                    [
                        {
                            "at": now,
                            "kind": EventKind.RETRY_QUEUED.value,
                            "message": "tried again: the last attempt failed",
                            "certificate_id": r.id,
                        }
                        for r in rows
                    ],
                )
        return [r.id for r in rows]

    def ari_due(self, now: datetime, limit: int) -> list[Certificate]:
        """Valid certificates whose ARI window should be asked for again."""
        c = certificates.c
        with self._read() as conn:
            return [
                certificate_row(r)
                for r in conn.execute(
                    select(*CERT_COLUMNS)
                    .where(and_(c.ari_next_check <= now, c.status == CertificateStatus.VALID.value))
                    .order_by(c.ari_next_check)
                    .limit(limit)
                )
            ]

    def postpone_ari_check(self, cert_id: int, until: datetime | None) -> None:
        with self._write() as conn:
            conn.execute(
                update(certificates)
                .where(certificates.c.id == cert_id)
                .values(ari_next_check=until)
            )

    def set_renewal_plan(
        self, cert_id: int, plan: RenewalPlan, ari_next_check: datetime | None, now: datetime
    ) -> None:
        with self._write() as conn:
            conn.execute(
                update(certificates)
                .where(certificates.c.id == cert_id)
                .values(
                    renew_at=plan.renew_at,
                    renewal_reason=plan.reason.value,
                    ari_next_check=ari_next_check,
                    updated_at=now,
                )
            )

    def add_renewal_order(
        self, cert_id: int, now: datetime, lease_owner: str | None, lease_until: datetime
    ) -> Order:
        """A renewal order for one certificate now, or its active order if it has one."""
        order = queued_order(
            cert_id, OrderPurpose.RENEW, now, lease_owner=lease_owner, lease_until=lease_until
        )
        try:
            with self._write() as conn:
                order_id = new_id(conn.execute(insert(orders).values(order)))
        except IntegrityError:  # one is active already (the unique index said so)
            with self._read() as conn:
                row = conn.execute(
                    select(orders).where(
                        and_(
                            orders.c.certificate_id == cert_id,
                            orders.c.state.in_(ACTIVE_ORDER_STATES),
                        )
                    )
                ).first()
            if row is None:
                raise
            return order_row(row)
        with self._read() as conn:
            return order_row(conn.execute(select(orders).where(orders.c.id == order_id)).one())

    # -- a client's certificate it may no longer have -------------------------------

    def approved_names(self, cert_id: int, client_id: int) -> set[str]:
        """The names an admin let through for this certificate of the client: those of
        its CSR requests that were approved (a decided request with a certificate;
        accepted, or superseded by a later CSR since)."""
        r = device_requests.c
        with self._read() as conn:
            rows = conn.execute(
                select(r.names).where(
                    and_(
                        r.certificate_id == cert_id,
                        r.client_id == client_id,
                        r.decided_by.is_not(None),
                    )
                )
            ).all()
        return {str(name).lower() for row in rows for name in json.loads(row.names)}

    def stop_for_client(
        self, order_id: int, owner: str, now: datetime, message: str, kind: str
    ) -> None:
        """The order ends before the CA is asked: the client the certificate was made for
        may no longer have it (`message` says why). In one transaction the order fails,
        the certificate is disabled as by `cert disable` (neither renewed nor retried
        until `cert enable`; one never issued is `failed`), and the failed attempt raises
        its alarm (of `kind`) with the events mail and webhooks are sent for."""
        with self._write() as conn:
            self._check_lease(conn, order_id, owner)
            cert_id = conn.execute(
                select(orders.c.certificate_id).where(orders.c.id == order_id)
            ).scalar_one()
            conn.execute(
                update(orders)
                .where(orders.c.id == order_id)
                .values(
                    state=OrderState.FAILED.value,
                    error=None,
                    error_message=message,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                    finished_at=now,
                )
            )
            conn.execute(delete(challenges).where(challenges.c.order_id == order_id))
            c = certificates.c
            conn.execute(
                update(certificates)
                .where(c.id == cert_id)
                .values(disabled=True, next_try_at=None, updated_at=now)
            )
            conn.execute(
                update(certificates)
                .where(and_(c.id == cert_id, c.status == CertificateStatus.PENDING.value))
                .values(status=CertificateStatus.FAILED.value)
            )
            failed_attempt(conn, now, cert_id, order_id, message, None, final=True, kind=kind)
            add_event(
                conn,
                now,
                EventKind.DISABLED,
                "disabled by the broker: its client may no longer have it; no retry or "
                "renewal until `certbroker cert enable`",
                cert_id=cert_id,
                order_id=order_id,
            )

    # -- keys of renewal orders ---------------------------------------------------------------

    def order_key_sealed(self, order_id: int) -> bytes | None:
        with self._read() as conn:
            value = conn.execute(
                select(orders.c.key_sealed).where(orders.c.id == order_id)
            ).scalar_one_or_none()
        return None if value is None else bytes(value)

    def set_order_key(self, order_id: int, owner: str, key_sealed: bytes, now: datetime) -> None:
        """A renewal's new key, stored before any CSR carries it."""
        with self._write() as conn:
            done = conn.execute(
                update(orders)
                .where(and_(orders.c.id == order_id, orders.c.lease_owner == owner))
                .values(key_sealed=key_sealed, updated_at=now)
            )
            if not done.rowcount:
                raise LeaseLost(f"order {order_id} is no longer held by {owner}")

    # -- the arrival of a certificate -----------------------------------------------------------

    def store_issued(
        self,
        cert_id: int,
        order_id: int,
        owner: str,
        issued: IssuedCertificate,
        now: datetime,
        plan: RenewalPlan,
        ari_next_check: datetime | None = None,
        key_type: str | None = None,
    ) -> None:
        """Certificate, renewal plan, order state and token clean-up in one transaction.

        The certificate it replaces (a renewal) goes into the history first, with its key,
        so it can still be shown, exported or revoked; a renewal's new key replaces the
        old one only here, together with the certificate it belongs to. So does a
        device's fresh CSR (`next_csr_pem`, its key of `key_type`) the one on file.
        """
        with self._write() as conn:
            self._check_lease(conn, order_id, owner)
            order = conn.execute(
                select(orders.c.key_sealed, orders.c.created_at).where(orders.c.id == order_id)
            ).one()
            old = conn.execute(select(certificates).where(certificates.c.id == cert_id)).one()
            if old.cert_pem is not None:
                conn.execute(
                    insert(certificate_history).values(
                        certificate_id=cert_id,
                        serial=old.serial,
                        issuer=old.issuer,
                        not_before=old.not_before,
                        not_after=old.not_after,
                        fingerprint_sha256=old.fingerprint_sha256,
                        cert_pem=old.cert_pem,
                        chain_pem=old.chain_pem,
                        key_sealed=old.key_sealed,
                        order_url=old.order_url,
                        status=old.status,
                        replaced_at=now,
                        replaced_because=_why_replaced(old, order.created_at),
                    )
                )
            values: dict[str, object] = {
                "status": CertificateStatus.VALID.value,
                "cert_pem": issued.cert_pem,
                "chain_pem": issued.chain_pem,
                "serial": issued.serial,
                "issuer": issued.issuer,
                "not_before": issued.not_before,
                "not_after": issued.not_after,
                "fingerprint_sha256": issued.fingerprint_sha256,
                "order_url": issued.order_url,
                "revocation_reason": None,
                "revoked_at": None,
                "renew_at": plan.renew_at,
                "renewal_reason": plan.reason.value,
                "ari_next_check": ari_next_check,
                "next_try_at": None,
                "updated_at": now,
            }
            if order.key_sealed is not None:
                values["key_sealed"] = order.key_sealed
            if old.next_csr_pem is not None:
                values |= {"csr_pem": old.next_csr_pem, "next_csr_pem": None}
            if key_type is not None:
                values["key_type"] = key_type
            conn.execute(update(certificates).where(certificates.c.id == cert_id).values(values))
            conn.execute(
                update(orders)
                .where(orders.c.id == order_id)
                .values(
                    state=OrderState.VALID.value,
                    error=None,
                    error_message=None,
                    key_sealed=None,  # it lives on the certificate now
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                    finished_at=now,
                )
            )
            conn.execute(delete(challenges).where(challenges.c.order_id == order_id))
            until = f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC"
            if old.cert_pem is not None:
                kind = EventKind.RENEWED
                message = f"renewed: serial {issued.serial} replaces {old.serial}, {until}"
            else:
                kind, message = EventKind.ISSUED, f"issued: serial {issued.serial}, {until}"
            succeeded(conn, now, cert_id, order_id, kind, message)
            # Push targets: queued with the certificate, so a crash cannot lose a deployment.
            queue_deployments(conn, cert_id, issued.serial, now)

    def history_of(self, cert_id: int) -> list[PastCertificate]:
        h = certificate_history.c
        with self._read() as conn:
            rows = conn.execute(
                select(
                    h.id,
                    h.serial,
                    h.not_before,
                    h.not_after,
                    h.fingerprint_sha256,
                    h.status,
                    h.replaced_at,
                    h.replaced_because,
                )
                .where(h.certificate_id == cert_id)
                .order_by(h.id)
            )
            return [
                PastCertificate(
                    id=r.id,
                    serial=r.serial,
                    not_before=r.not_before,
                    not_after=r.not_after,
                    fingerprint_sha256=r.fingerprint_sha256,
                    status=r.status,
                    replaced_at=r.replaced_at,
                    replaced_because=r.replaced_because,
                )
                for r in rows
            ]


def _why_replaced(old: Row[Any], ordered_at: datetime) -> str:
    if old.status == CertificateStatus.REVOKED.value:
        return "renewed after it was revoked"
    if old.renew_at is not None and old.renew_at <= ordered_at:
        reason = old.renewal_reason
        return f"renewed when due ({reason})" if reason else "renewed when due"
    return "renewed early, on request"
