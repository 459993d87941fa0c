"""The repository: typed storage for accounts, certificates, orders and challenge tokens."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from certbroker.domain.errors import AcmeProblem, NotFoundError, UsageError
from certbroker.domain.models import (
    ACTIVE_ORDER_STATES,
    WAITING_FOR_A_PERSON,
    Account,
    AccountStatus,
    Certificate,
    CertificateStatus,
    EventKind,
    NewCertificate,
    Order,
    OrderPurpose,
    OrderState,
)
from certbroker.store.access import AccessStore, mark_idempotent_work
from certbroker.store.agents import AgentStore
from certbroker.store.audit import AuditStore
from certbroker.store.budgets import BudgetStore
from certbroker.store.clients import ClientStore
from certbroker.store.dns import DnsStore
from certbroker.store.events import add_event
from certbroker.store.events import failed_attempt as record_failure
from certbroker.store.listing import ListingStore
from certbroker.store.metrics import MetricsStore
from certbroker.store.notify import NotifyStore
from certbroker.store.renewals import RenewalStore
from certbroker.store.rows import (
    CERT_COLUMNS,
    account_row,
    certificate_row,
    insert_certificate,
    new_id,
    order_row,
    put_challenges,
    queued_order,
)
from certbroker.store.schema import (
    UTCDateTime,
    accounts,
    certificate_history,
    certificates,
    challenges,
    device_requests,
    dns_accounts,
    expiry_warnings,
    installations,
    orders,
    runtime_settings,
    targets,
    webhooks,
)
from certbroker.store.sealed import SealedStore
from certbroker.store.targets import TargetStore
from certbroker.store.webhooks import WebhookStore

# Built once (see store/base.py): the look-ups every issuance makes.
_ACCOUNT_BY_NAME = select(accounts).where(accounts.c.name == bindparam("b_name"))
_ACCOUNT_BY_ID_OR_NAME = select(accounts).where(
    or_(accounts.c.id == bindparam("b_id"), accounts.c.name == bindparam("b_name"))
)
_ACCOUNT_KEY = select(accounts.c.key_sealed).where(accounts.c.id == bindparam("b_id"))
_CERTIFICATE = select(*CERT_COLUMNS).where(certificates.c.id == bindparam("b_id"))
_CERTIFICATE_KEY = select(certificates.c.key_sealed).where(certificates.c.id == bindparam("b_id"))
_ORDER = select(orders).where(orders.c.id == bindparam("b_id"))
_ACTIVE_ORDER = (
    select(orders)
    .where(
        and_(
            orders.c.certificate_id == bindparam("b_id"),
            orders.c.state.in_(ACTIVE_ORDER_STATES),
        )
    )
    .order_by(orders.c.id.desc())
)


def _certificate_of(conn: Connection, order_id: int) -> int:
    return int(
        conn.execute(select(orders.c.certificate_id).where(orders.c.id == order_id)).scalar_one()
    )


class Repository(
    RenewalStore,
    DnsStore,
    AccessStore,
    ListingStore,
    ClientStore,
    TargetStore,
    AgentStore,
    MetricsStore,
    NotifyStore,
    AuditStore,
    WebhookStore,
    BudgetStore,
    SealedStore,
):
    """Typed storage; renewal, history and arrival of certificates in store/renewals.py."""

    # -- accounts ------------------------------------------------------------------------

    def add_account(
        self,
        *,
        name: str,
        directory_url: str,
        ca_bundle: str | None,
        emails: Sequence[str],
        key_type: str,
        key_sealed: bytes,
        uri: str | None,
        status: AccountStatus,
        terms_of_service: str | None,
        eab_kid: str | None,
        now: datetime,
    ) -> Account:
        try:
            with self._write() as conn:
                result = conn.execute(
                    insert(accounts).values(
                        name=name,
                        directory_url=directory_url,
                        ca_bundle=ca_bundle,
                        emails=json.dumps(list(emails)),
                        key_type=key_type,
                        key_sealed=key_sealed,
                        uri=uri,
                        status=status.value,
                        terms_of_service=terms_of_service,
                        eab_kid=eab_kid,
                        created_at=now,
                        updated_at=now,
                    )
                )
                account_id = new_id(result)
        except IntegrityError:
            raise UsageError(
                f"an account named {name!r} already exists; choose another --name"
            ) from None
        return self.get_account(account_id)

    def account_name_taken(self, name: str) -> bool:
        with self._read() as conn:
            return (
                conn.execute(select(accounts.c.id).where(accounts.c.name == name)).first()
                is not None
            )

    def get_account(self, ref: str | int) -> Account:
        with self._read() as conn:
            if isinstance(ref, int) or str(ref).isdigit():
                params = {"b_id": int(ref), "b_name": str(ref)}
                row = conn.execute(_ACCOUNT_BY_ID_OR_NAME, params).first()
            else:
                row = conn.execute(_ACCOUNT_BY_NAME, {"b_name": ref}).first()
        if row is None:
            raise NotFoundError(
                f"no account {ref!r}; see `certbroker account list` or register one"
            )
        return account_row(row)

    def list_accounts(self) -> list[Account]:
        with self._read() as conn:
            return [account_row(r) for r in conn.execute(select(accounts).order_by(accounts.c.id))]

    def account_key_sealed(self, account_id: int) -> bytes:
        with self._read() as conn:
            value = conn.execute(_ACCOUNT_KEY, {"b_id": account_id}).scalar_one()
        return bytes(value)

    def account_next_key_sealed(self, account_id: int) -> bytes | None:
        with self._read() as conn:
            value = conn.execute(
                select(accounts.c.next_key_sealed).where(accounts.c.id == account_id)
            ).scalar_one_or_none()
        return None if value is None else bytes(value)

    def _update_account(self, account_id: int, now: datetime, values: dict[str, Any]) -> Account:
        with self._write() as conn:
            conn.execute(
                update(accounts).where(accounts.c.id == account_id).values(updated_at=now, **values)
            )
        return self.get_account(account_id)

    def set_account_status(self, account_id: int, status: AccountStatus, now: datetime) -> Account:
        return self._update_account(account_id, now, {"status": status.value})

    def set_account_emails(self, account_id: int, emails: Sequence[str], now: datetime) -> Account:
        return self._update_account(account_id, now, {"emails": json.dumps(list(emails))})

    def set_account_from_ca(
        self, account_id: int, status: AccountStatus, emails: Sequence[str], now: datetime
    ) -> Account:
        """What the CA says of the account: its status and contacts."""
        values = {"status": status.value, "emails": json.dumps(list(emails))}
        return self._update_account(account_id, now, values)

    def set_account_registered(
        self, account_id: int, uri: str, status: AccountStatus, now: datetime
    ) -> Account:
        """The account registered again at its CA, under a new URL; its failing
        certificates are tried again now."""
        c = certificates.c
        with self._write() as conn:
            conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(uri=uri, status=status.value, updated_at=now)
            )
            conn.execute(
                update(certificates)
                .where(
                    and_(
                        c.account_id == account_id,
                        c.next_try_at.is_not(None),
                        c.disabled.is_(False),
                    )
                )
                .values(next_try_at=now)
            )
        return self.get_account(account_id)

    def stage_account_key(
        self, account_id: int, next_key_sealed: bytes | None, now: datetime
    ) -> None:
        """A key rollover's new key, stored before the CA hears of it (None: abandoned)."""
        self._update_account(account_id, now, {"next_key_sealed": next_key_sealed})

    def swap_account_key(
        self, account_id: int, key_sealed: bytes, key_type: str, now: datetime
    ) -> Account:
        """The rollover reached the CA: the staged key becomes the account's key."""
        values = {"key_sealed": key_sealed, "next_key_sealed": None, "key_type": key_type}
        return self._update_account(account_id, now, values)

    def count_certificates_of_account(self, account_id: int) -> int:
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(certificates)
                    .where(certificates.c.account_id == account_id)
                ).scalar_one()
            )

    def certificates_falling_back_to(self, account_id: int) -> list[int]:
        """The certificates that name this account as one to fall back to when their own
        account's CA fails (CA fallback), by ID."""
        c = certificates.c
        with self._read() as conn:
            rows = conn.execute(
                select(c.id, c.fallback_account_ids)
                .where(c.fallback_account_ids.is_not(None))
                .order_by(c.id)
            ).all()
        return [int(r.id) for r in rows if account_id in json.loads(r.fallback_account_ids)]

    def delete_account(self, account_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(accounts).where(accounts.c.id == account_id))

    # -- certificates --------------------------------------------------------------------

    def create_certificate(
        self,
        new: NewCertificate,
        now: datetime,
        lease_owner: str | None,
        lease_until: datetime,
        idempotency: tuple[str, str] | None = None,
    ) -> tuple[Certificate, Order]:
        """The certificate, its key and its first order, in one transaction; with
        `idempotency` (owner, key), the request holding that key is marked as having done
        it in the same transaction."""
        with self._write() as conn:
            cert_id, order_id = insert_certificate(conn, new, now, lease_owner, lease_until)
            if idempotency is not None:
                mark_idempotent_work(conn, idempotency, f"certificate:{cert_id}:{order_id}")
        return self.get_certificate(cert_id), self.get_order(order_id)

    def get_certificate(self, cert_id: int) -> Certificate:
        with self._read() as conn:
            row = conn.execute(_CERTIFICATE, {"b_id": cert_id}).first()
        if row is None:
            raise NotFoundError(f"no certificate with ID {cert_id}; see `certbroker cert list`")
        return certificate_row(row)

    def certificate_key_sealed(self, cert_id: int) -> bytes | None:
        with self._read() as conn:
            value = conn.execute(_CERTIFICATE_KEY, {"b_id": cert_id}).scalar_one_or_none()
        return None if value is None else bytes(value)

    def keystore_password_sealed(self, cert_id: int) -> bytes | None:
        with self._read() as conn:
            value = conn.execute(
                select(certificates.c.keystore_password_sealed).where(certificates.c.id == cert_id)
            ).scalar_one_or_none()
        return None if value is None else bytes(value)

    def list_certificates(
        self,
        *,
        now: datetime,
        status: CertificateStatus | None = None,
        expiring_within: timedelta | None = None,
    ) -> list[Certificate]:
        query = select(*CERT_COLUMNS).order_by(certificates.c.id)
        c = certificates.c
        if status is CertificateStatus.EXPIRED:
            query = query.where(and_(c.status == CertificateStatus.VALID.value, c.not_after <= now))
        elif status is CertificateStatus.VALID:
            query = query.where(and_(c.status == CertificateStatus.VALID.value, c.not_after > now))
        elif status is not None:
            query = query.where(c.status == status.value)
        if expiring_within is not None:
            query = query.where(
                and_(
                    c.status == CertificateStatus.VALID.value, c.not_after <= now + expiring_within
                )
            )
        with self._read() as conn:
            return [certificate_row(r) for r in conn.execute(query)]

    def mark_revoked(self, cert_id: int, reason: str, now: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                update(certificates)
                .where(certificates.c.id == cert_id)
                .values(
                    status=CertificateStatus.REVOKED.value,
                    revocation_reason=reason,
                    revoked_at=now,
                    updated_at=now,
                )
            )
            add_event(conn, now, EventKind.REVOKED, f"revoked ({reason})", cert_id=cert_id)

    def set_disabled(
        self, cert_id: int, disabled: bool, now: datetime, next_try_at: datetime | None
    ) -> None:
        """A person stops (or allows again) the certificate's retries and renewal; with
        `next_try_at`, a failing one is tried again then."""
        kind = EventKind.DISABLED if disabled else EventKind.ENABLED
        message = (
            "disabled: no retry or renewal until `certbroker cert enable`"
            if disabled
            else "enabled: retried and renewed again"
        )
        with self._write() as conn:
            conn.execute(
                update(certificates)
                .where(certificates.c.id == cert_id)
                .values(disabled=disabled, next_try_at=next_try_at, updated_at=now)
            )
            add_event(conn, now, kind, message, cert_id=cert_id)

    def delete_certificate(self, cert_id: int, now: datetime | None = None) -> None:
        """The certificate and everything that points at it, in one transaction (target
        attachments and deployments by their foreign keys): an agent's installation, a
        device's requests, the expiry warnings sent. Its events stay, the last one naming
        it, and its id is never given to another (migration 0027)."""
        with self._write() as conn:
            if now is not None:
                names = conn.execute(
                    select(certificates.c.names).where(certificates.c.id == cert_id)
                ).scalar_one_or_none()
                shown = ", ".join(json.loads(names)) if names else "?"
                add_event(conn, now, EventKind.DELETED, f"deleted ({shown})", cert_id=cert_id)
            order_ids = select(orders.c.id).where(orders.c.certificate_id == cert_id)
            conn.execute(delete(challenges).where(challenges.c.order_id.in_(order_ids)))
            conn.execute(delete(orders).where(orders.c.certificate_id == cert_id))
            conn.execute(
                delete(certificate_history).where(certificate_history.c.certificate_id == cert_id)
            )
            for table in (installations, device_requests, expiry_warnings):
                conn.execute(delete(table).where(table.c.certificate_id == cert_id))
            conn.execute(delete(certificates).where(certificates.c.id == cert_id))

    # -- orders --------------------------------------------------------------------------

    def add_order(
        self, cert_id: int, now: datetime, lease_owner: str | None, lease_until: datetime
    ) -> Order:
        """A new first-issuance order for a certificate that has none active (a retry)."""
        order = queued_order(
            cert_id, OrderPurpose.ISSUE, now, lease_owner=lease_owner, lease_until=lease_until
        )
        with self._write() as conn:
            order_id = new_id(conn.execute(insert(orders).values(order)))
        return self.get_order(order_id)

    def known_order_urls(self, urls: list[str]) -> set[str]:
        """Those of `urls` an order here names, or gave up (`cert verify --new-challenge`)."""
        if not urls:
            return set()
        o = orders.c
        with self._read() as conn:
            rows = conn.execute(
                select(o.order_url, o.abandoned_url).where(
                    or_(o.order_url.in_(urls), o.abandoned_url.in_(urls))
                )
            )
            return {str(url) for row in rows for url in row if url in urls}

    def get_order(self, order_id: int) -> Order:
        with self._read() as conn:
            row = conn.execute(_ORDER, {"b_id": order_id}).first()
        if row is None:
            raise NotFoundError(f"no order with ID {order_id}")
        return order_row(row)

    def orders_of(self, cert_id: int) -> list[Order]:
        with self._read() as conn:
            rows = conn.execute(
                select(orders).where(orders.c.certificate_id == cert_id).order_by(orders.c.id)
            )
            return [order_row(r) for r in rows]

    def active_order_of(self, cert_id: int) -> Order | None:
        with self._read() as conn:
            row = conn.execute(_ACTIVE_ORDER, {"b_id": cert_id}).first()
        return None if row is None else order_row(row)

    def try_claim(
        self, order_id: int, owner: str, now: datetime, until: datetime, steal_from: str | None
    ) -> bool:
        """Take the lease when it is free, expired, or held by `steal_from` (a dead process)."""
        free = or_(orders.c.lease_owner.is_(None), orders.c.lease_until <= now)
        if steal_from is not None:
            free = or_(free, orders.c.lease_owner == steal_from)
        with self._write() as conn:
            result = conn.execute(
                update(orders)
                .where(
                    and_(
                        orders.c.id == order_id,
                        orders.c.state.in_(ACTIVE_ORDER_STATES),
                        or_(free, orders.c.lease_owner == owner),
                    )
                )
                .values(
                    lease_owner=owner,
                    lease_until=until,
                    started_at=func.coalesce(orders.c.started_at, literal(now, UTCDateTime())),
                    taken_over=_taken_over(owner, now),
                )
            )
            return bool(result.rowcount)

    def claimable_orders(
        self, now: datetime, limit: int
    ) -> list[tuple[int, str | None, datetime | None]]:
        """Active orders whose time has come, as (id, lease owner, lease until).

        Free and expired leases come first; leases still held are listed after them so
        the caller can take over one whose holder died (`holder_is_dead`).
        """
        held = and_(orders.c.lease_owner.is_not(None), orders.c.lease_until > now)
        with self._read() as conn:
            rows = conn.execute(
                select(orders.c.id, orders.c.lease_owner, orders.c.lease_until)
                .where(
                    and_(
                        orders.c.state.in_(ACTIVE_ORDER_STATES),
                        orders.c.state.not_in(WAITING_FOR_A_PERSON),
                        or_(orders.c.next_run_at.is_(None), orders.c.next_run_at <= now),
                    )
                )
                .order_by(held, orders.c.next_run_at, orders.c.id)
                .limit(limit)
            )
            return [(r.id, r.lease_owner, r.lease_until) for r in rows]

    def claim_next(self, owner: str, now: datetime, until: datetime) -> Order | None:
        """Take the lease of the next due order whose lease is free or expired, in one
        statement, so workers racing for work never pick the same order twice (PostgreSQL
        skips rows another claim has locked; SQLite runs one writer at a time)."""
        free = and_(
            orders.c.state.in_(ACTIVE_ORDER_STATES),
            orders.c.state.not_in(WAITING_FOR_A_PERSON),
            or_(orders.c.next_run_at.is_(None), orders.c.next_run_at <= now),
            or_(orders.c.lease_owner.is_(None), orders.c.lease_until <= now),
        )
        candidate = (
            select(orders.c.id)
            .where(free)
            .order_by(orders.c.next_run_at, orders.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with self._write() as conn:
            row = conn.execute(
                update(orders)
                .where(and_(orders.c.id == candidate.scalar_subquery(), free))
                .values(
                    lease_owner=owner,
                    lease_until=until,
                    started_at=func.coalesce(orders.c.started_at, literal(now, UTCDateTime())),
                    taken_over=_taken_over(owner, now),
                )
                .returning(*orders.c)
            ).first()
        return None if row is None else order_row(row)

    # -- the steps of an order, each under the caller's lease (LeaseLost otherwise) --------

    def _mark(
        self, order_id: int, owner: str, now: datetime, until: datetime, state: OrderState
    ) -> None:
        with self._write() as conn:
            self._update_held(conn, order_id, owner, now, until, {"state": state.value})

    def mark_ordered(
        self,
        order_id: int,
        owner: str,
        now: datetime,
        until: datetime,
        *,
        order_url: str,
        replaces: str | None,
    ) -> None:
        """The CA has the order: its URL (and the ARI certID it replaces) stored."""
        values = {"state": OrderState.ORDERED.value, "order_url": order_url, "replaces": replaces}
        with self._write() as conn:
            self._update_held(conn, order_id, owner, now, until, values)

    def mark_presented(self, order_id: int, owner: str, now: datetime, until: datetime) -> None:
        """Every challenge is where the CA will look."""
        self._mark(order_id, owner, now, until, OrderState.PRESENTED)

    def mark_answered(self, order_id: int, owner: str, now: datetime, until: datetime) -> None:
        """The CA was told to validate every challenge."""
        self._mark(order_id, owner, now, until, OrderState.ANSWERED)

    def mark_finalizing(self, order_id: int, owner: str, now: datetime, until: datetime) -> None:
        """The CSR is about to be sent: from here a resume never finalizes again."""
        self._mark(order_id, owner, now, until, OrderState.FINALIZING)

    def keep_lease(self, order_id: int, owner: str, now: datetime, until: datetime) -> None:
        """Extend the lease while a step waits (the CA, DNS propagation)."""
        with self._write() as conn:
            self._update_held(conn, order_id, owner, now, until, {})

    def count_failed_attempt(
        self,
        order_id: int,
        owner: str,
        now: datetime,
        until: datetime,
        *,
        attempts: int,
        message: str,
        problem: AcmeProblem | None,
    ) -> None:
        """An attempt failed and the holder goes on at once (a new order at the CA): the
        count, the problem, an event and the certificate's alarm, in one transaction."""
        values = {
            "attempts": attempts,
            "error": json.dumps(problem.to_json()) if problem else None,
            "error_message": message,
        }
        with self._write() as conn:
            self._update_held(conn, order_id, owner, now, until, values)
            cert_id = _certificate_of(conn, order_id)
            record_failure(conn, now, cert_id, order_id, message, problem, final=False)

    def fail_order(
        self,
        order_id: int,
        owner: str,
        now: datetime,
        message: str,
        problem: AcmeProblem | None,
        *,
        next_try_at: datetime | None = None,
        fall_back_to: int | None = None,
        fallback_message: str = "",
    ) -> None:
        """The order failed for good. With `fall_back_to`, a new order for the same
        certificate goes to that account at once (CA fallback). Otherwise the
        certificate is tried again at `next_try_at` (the scheduler queues it then); a
        certificate that was never issued is `failed` meanwhile, an issued one keeps its
        status and its certificate."""
        with self._write() as conn:
            self._check_lease(conn, order_id, owner)
            cert_id, purpose = conn.execute(
                select(orders.c.certificate_id, orders.c.purpose).where(orders.c.id == order_id)
            ).one()
            conn.execute(
                update(orders)
                .where(orders.c.id == order_id)
                .values(
                    state=OrderState.FAILED.value,
                    error=json.dumps(problem.to_json()) if problem else None,
                    error_message=message,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                    finished_at=now,
                )
            )
            conn.execute(delete(challenges).where(challenges.c.order_id == order_id))
            record_failure(conn, now, cert_id, order_id, message, problem, final=True)
            if fall_back_to is not None:
                order = queued_order(cert_id, OrderPurpose(purpose), now, account_id=fall_back_to)
                conn.execute(insert(orders).values(order))
                add_event(conn, now, EventKind.CA_FALLBACK, fallback_message, cert_id=cert_id)
                return
            c = certificates.c
            conn.execute(
                update(certificates)
                .where(c.id == cert_id)
                .values(next_try_at=next_try_at, updated_at=now)
            )
            conn.execute(
                update(certificates)
                .where(and_(c.id == cert_id, c.status == CertificateStatus.PENDING.value))
                .values(status=CertificateStatus.FAILED.value)
            )

    def retry_later(
        self,
        order_id: int,
        owner: str,
        now: datetime,
        *,
        attempts: int,
        message: str,
        problem: AcmeProblem | None,
        next_run_at: datetime,
    ) -> None:
        """A transient failure: count it, record it, and let the order go until
        `next_run_at` (any worker may take it then)."""
        values = {
            "attempts": attempts,
            "error": json.dumps(problem.to_json()) if problem else None,
            "error_message": message,
            "next_run_at": next_run_at,
            "lease_owner": None,
        }
        with self._write() as conn:
            self._update_held(conn, order_id, owner, now, None, values)
            cert_id = _certificate_of(conn, order_id)
            record_failure(conn, now, cert_id, order_id, message, problem, final=False)

    def hold(self, order_id: int, owner: str, now: datetime, until: datetime, message: str) -> None:
        """Let the order go until `until` without counting an attempt (a rate limit of
        ours, not a failure), with an event that says why."""
        values = {"error_message": message, "next_run_at": until, "lease_owner": None}
        with self._write() as conn:
            self._update_held(conn, order_id, owner, now, None, values)
            cert_id = _certificate_of(conn, order_id)
            add_event(conn, now, EventKind.HELD_BACK, message, cert_id=cert_id, order_id=order_id)

    # -- runtime settings ----------------------------------------------------------------

    def get_setting(self, name: str) -> str | None:
        with self._read() as conn:
            value = conn.execute(
                select(runtime_settings.c.value).where(runtime_settings.c.name == name)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def set_setting(self, name: str, value: str, now: datetime) -> None:
        change = (
            update(runtime_settings)
            .where(runtime_settings.c.name == name)
            .values(value=value, updated_at=now)
        )
        try:
            with self._write() as conn:
                if not conn.execute(change).rowcount:
                    conn.execute(
                        insert(runtime_settings).values(name=name, value=value, updated_at=now)
                    )
        except IntegrityError:  # another process inserted it meanwhile (PostgreSQL)
            with self._write() as conn:
                conn.execute(change)

    # -- secrets at rest -----------------------------------------------------------------

    def a_sealed_secret(self) -> bytes | None:
        """Any one secret sealed with the master key (an account key, a certificate's
        key, a DNS account's credentials, a push target's SSH identity or PKCS#12
        password, a webhook's signing secret), or None when the store holds none."""
        queries = (
            select(accounts.c.key_sealed),
            select(certificates.c.key_sealed).where(certificates.c.key_sealed.is_not(None)),
            select(dns_accounts.c.secrets_sealed),
            select(certificate_history.c.key_sealed).where(
                certificate_history.c.key_sealed.is_not(None)
            ),
            select(targets.c.identity_sealed).where(targets.c.identity_sealed.is_not(None)),
            select(targets.c.pkcs12_password_sealed).where(
                targets.c.pkcs12_password_sealed.is_not(None)
            ),
            select(webhooks.c.secret_sealed),
        )
        with self._read() as conn:
            for query in queries:
                value = conn.execute(query.limit(1)).scalar_one_or_none()
                if value is not None:
                    return bytes(value)
        return None

    # -- challenge tokens ----------------------------------------------------------------

    def put_challenges(
        self, order_id: int | None, items: Iterable[tuple[str, str, str, str]], now: datetime
    ) -> None:
        """(token, key authorization, identifier, type) rows; re-presenting is harmless."""
        with self._write() as conn:
            put_challenges(conn, order_id, items, now)

    def present_challenges(
        self, order_id: int, owner: str, items: Iterable[tuple[str, str, str, str]], now: datetime
    ) -> None:
        """An order's tokens, under its lease: a worker that lost the lease writes none."""
        with self._write() as conn:
            self._check_lease(conn, order_id, owner)
            put_challenges(conn, order_id, items, now)

    def challenges_in_flight(self, now: datetime) -> int:
        """Tokens of orders a live worker is driving (active, lease not run out): what a
        responder must keep answering."""
        live = and_(
            orders.c.id == challenges.c.order_id,
            orders.c.state.in_(ACTIVE_ORDER_STATES),
            orders.c.lease_until > now,
        )
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(challenges).join(orders, live)
                ).scalar_one()
            )

    def key_authorization(self, token: str) -> str | None:
        with self._read() as conn:
            value = conn.execute(
                select(challenges.c.key_authorization).where(challenges.c.token == token)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def delete_challenge(self, token: str) -> None:
        with self._write() as conn:
            conn.execute(delete(challenges).where(challenges.c.token == token))


def _taken_over(owner: str, now: datetime) -> ColumnElement[bool]:
    """In a claim's SET: whether the order was taken from a holder that never let it go
    (SET expressions see the row as it was). An order let go after a failure, a hold or a
    wait names no holder; one whose holder died, or whose lease ran out (a worker that lost
    the database mid-step keeps its lease, and may claim the order again itself), still
    names it. Re-claiming one's own live lease (`cert request --wait`) is no takeover."""
    return and_(
        orders.c.lease_owner.is_not(None),
        or_(orders.c.lease_owner != owner, orders.c.lease_until <= now),
    )
