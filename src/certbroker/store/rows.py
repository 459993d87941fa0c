"""Rows to domain objects, and the statements several store modules share."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, insert

from certbroker.domain.errors import AcmeProblem
from certbroker.domain.keys import KeyPolicy
from certbroker.domain.models import (
    Account,
    AccountStatus,
    Certificate,
    CertificateStatus,
    ChallengeType,
    NewCertificate,
    Order,
    OrderPurpose,
    OrderState,
)
from certbroker.domain.renewal import RenewalReason
from certbroker.store.schema import certificates, challenges, orders


def new_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def account_row(row: Row[Any]) -> Account:
    return Account(
        id=row.id,
        name=row.name,
        directory_url=row.directory_url,
        emails=tuple(json.loads(row.emails)),
        key_type=row.key_type,
        uri=row.uri,
        status=AccountStatus(row.status),
        terms_of_service=row.terms_of_service,
        eab_kid=row.eab_kid,
        ca_bundle=row.ca_bundle,
        created_at=row.created_at,
    )


_SEALED = ("key_sealed", "keystore_password_sealed")
CERT_COLUMNS: list[Any] = [
    *(c for c in certificates.c if c.name not in _SEALED),
    certificates.c.keystore_password_sealed.is_not(None).label("has_keystore_password"),
]


def certificate_row(row: Row[Any]) -> Certificate:
    return Certificate(
        id=row.id,
        names=tuple(json.loads(row.names)),
        status=CertificateStatus(row.status),
        account_id=row.account_id,
        challenge=ChallengeType(row.challenge),
        key_type=row.key_type,
        key_policy=KeyPolicy(row.key_policy),
        subject=json.loads(row.subject),
        created_at=row.created_at,
        updated_at=row.updated_at,
        serial=row.serial,
        issuer=row.issuer,
        not_before=row.not_before,
        not_after=row.not_after,
        fingerprint_sha256=row.fingerprint_sha256,
        order_url=row.order_url,
        cert_pem=row.cert_pem,
        chain_pem=row.chain_pem,
        revocation_reason=row.revocation_reason,
        revoked_at=row.revoked_at,
        renew_at=row.renew_at,
        renew_before_days=row.renew_before_days,
        renewal_reason=RenewalReason(row.renewal_reason) if row.renewal_reason else None,
        alarm_since=row.alarm_since,
        alarm_message=row.alarm_message,
        alarm_ack_until=row.alarm_ack_until,
        alarm_ack_by=row.alarm_ack_by,
        alarm_ack_reason=row.alarm_ack_reason,
        notify_to=tuple(json.loads(row.notify_to or "[]")),
        ari_next_check=row.ari_next_check,
        profile=row.profile,
        fallback_account_ids=tuple(json.loads(row.fallback_account_ids or "[]")),
        dns_account_id=row.dns_account_id,
        dns_manual=bool(row.dns_manual),
        next_try_at=row.next_try_at,
        disabled=bool(row.disabled),
        label=row.label,
        description=row.description,
        keystore_type=row.keystore_type,
        has_keystore_password=bool(row.has_keystore_password),
        client_id=row.client_id,
        csr_pem=row.csr_pem,
        device_renews=bool(row.device_renews),
        next_csr_pem=row.next_csr_pem,
    )


def order_row(row: Row[Any]) -> Order:
    return Order(
        id=row.id,
        certificate_id=row.certificate_id,
        state=OrderState(row.state),
        order_url=row.order_url,
        created_at=row.created_at,
        updated_at=row.updated_at,
        attempts=row.attempts,
        error=AcmeProblem.from_json(json.loads(row.error)) if row.error else None,
        error_message=row.error_message,
        finished_at=row.finished_at,
        started_at=row.started_at,
        taken_over=bool(row.taken_over),
        purpose=OrderPurpose(row.purpose),
        replaces=row.replaces,
        account_id=row.account_id,
        lease_owner=row.lease_owner,
        lease_until=row.lease_until,
        next_run_at=row.next_run_at,
    )


def queued_order(
    cert_id: int,
    purpose: OrderPurpose,
    now: datetime,
    *,
    account_id: int | None = None,
    lease_owner: str | None = None,
    lease_until: datetime | None = None,
) -> dict[str, object]:
    """The row of a new order, queued: the one way every order begins (a request, a
    retry, a renewal, a fallback to another account). With `lease_owner`, it is leased
    to that worker from the start (`cert request --wait`), so no other takes it."""
    return {
        "certificate_id": cert_id,
        "account_id": account_id,
        "state": OrderState.QUEUED.value,
        "purpose": purpose.value,
        "attempts": 0,
        "lease_owner": lease_owner,
        "lease_until": lease_until if lease_owner else None,
        "next_run_at": now,
        "started_at": now if lease_owner else None,
        "created_at": now,
        "updated_at": now,
    }


def put_challenges(
    conn: Connection,
    order_id: int | None,
    items: Iterable[tuple[str, str, str, str]],
    now: datetime,
) -> None:
    rows = [
        {
            "token": token,
            "key_authorization": key_auth,
            "order_id": order_id,
            "identifier": identifier,
            "type": kind,
            "created_at": now,
        }
        for token, key_auth, identifier, kind in items
    ]
    if rows:
        tokens = [r["token"] for r in rows]
        conn.execute(delete(challenges).where(challenges.c.token.in_(tokens)))
        conn.execute(insert(challenges), rows)


def insert_certificate(
    conn: Connection,
    new: NewCertificate,
    now: datetime,
    lease_owner: str | None,
    lease_until: datetime,
) -> tuple[int, int]:
    """The certificate and its first order, on `conn` (the caller's transaction): their IDs."""
    cert_id = new_id(
        conn.execute(
            insert(certificates),
            dict(
                names=json.dumps(list(new.names)),
                status=CertificateStatus.PENDING.value,
                account_id=new.account_id,
                challenge=new.challenge.value,
                key_type=new.key_type,
                key_policy=new.key_policy.value,
                subject=json.dumps(new.subject),
                key_sealed=new.key_sealed,
                renew_before_days=new.renew_before_days,
                profile=new.profile,
                fallback_account_ids=(
                    json.dumps(list(new.fallback_account_ids)) if new.fallback_account_ids else None
                ),
                dns_account_id=new.dns_account_id,
                dns_manual=new.dns_manual,
                label=new.label,
                description=new.description,
                keystore_type=new.keystore_type,
                keystore_password_sealed=new.keystore_password_sealed,
                client_id=new.client_id,
                csr_pem=new.csr_pem,
                device_renews=new.device_renews,
                created_at=now,
                updated_at=now,
            ),
        )
    )
    order = queued_order(
        cert_id, OrderPurpose.ISSUE, now, lease_owner=lease_owner, lease_until=lease_until
    )
    # Parameters apart from the statement: it is compiled once and cached (a `.values()`
    # of many columns costs more than the insert itself).
    return cert_id, new_id(conn.execute(insert(orders), order))
