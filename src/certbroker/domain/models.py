"""What the broker keeps: accounts, certificates and the orders that obtain them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from certbroker.domain.errors import AcmeProblem
from certbroker.domain.keys import KeyPolicy
from certbroker.domain.renewal import RenewalReason


class AccountStatus(StrEnum):
    VALID = "valid"
    DEACTIVATED = "deactivated"  # by us or at the CA (deactivated or revoked there)

    @classmethod
    def from_ca(cls, status: str) -> AccountStatus:
        """The one reading of an account's status as the CA reports it (RFC 8555 7.1.2:
        valid, deactivated, revoked): only a valid account can order or sign."""
        return cls.VALID if status == cls.VALID else cls.DEACTIVATED


class ChallengeType(StrEnum):
    """How control of a name is proven. Each has a ChallengeSolver (ports.py)."""

    HTTP_01 = "http-01"
    DNS_01 = "dns-01"
    # HTTP-01 answered at the edge by the gateway agents allowed the names:
    # the broker need not be reachable from the CA.
    AGENT_HTTP_01 = "agent-http-01"

    @property
    def acme_type(self) -> str:
        """The challenge type the CA knows it by."""
        return "http-01" if self is ChallengeType.AGENT_HTTP_01 else self.value

    @classmethod
    def parse(cls, text: str) -> ChallengeType:
        from certbroker.domain.errors import UsageError

        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(c.value for c in cls)
            raise UsageError(
                f"challenge {text!r} is not available; choose one of {choices}"
            ) from None


DEFAULT_CHALLENGE = ChallengeType.HTTP_01  # what a request uses unless it says otherwise


class AcmeStatus(StrEnum):
    """The status of an ACME order, authorization or challenge (RFC 8555 7.1.6), as the
    CA sends it. OrderInfo and AuthorizationInfo keep the CA's text, so a status this
    list lacks can still be named in an error; compare against these members."""

    PENDING = "pending"
    READY = "ready"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"
    REVOKED = "revoked"


class CertificateStatus(StrEnum):
    PENDING = "pending"
    VALID = "valid"
    FAILED = "failed"
    REVOKED = "revoked"
    EXPIRED = "expired"  # never stored: a valid certificate past its not-after


class OrderPurpose(StrEnum):
    ISSUE = "issue"  # the certificate's first certificate (or a retry of it)
    RENEW = "renew"  # replaces the current certificate once the new one is stored


class OrderState(StrEnum):
    """Steps of one order. Each is written before the next starts (see docs/architecture.md)."""

    QUEUED = "queued"  # nothing sent to the CA yet
    ORDERED = "ordered"  # the CA has the order; its URL is stored
    PRESENTED = "presented"  # every challenge token is in the store, served by the responder
    # (dns-01: every TXT record is written)
    AWAITING_DNS = "awaiting-dns"  # manual dns-01: a person writes the records, then `cert verify`
    ANSWERED = "answered"  # the CA was told to validate
    FINALIZING = "finalizing"  # the CSR was sent
    VALID = "valid"  # the certificate is stored
    FAILED = "failed"  # stopped; the error says why

    @property
    def active(self) -> bool:
        return self not in (OrderState.VALID, OrderState.FAILED)


ACTIVE_ORDER_STATES = tuple(s.value for s in OrderState if s.active)
# Active but left alone by workers: only `cert verify` moves it on.
WAITING_FOR_A_PERSON = (OrderState.AWAITING_DNS.value,)


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    directory_url: str
    emails: tuple[str, ...]
    key_type: str
    uri: str | None
    status: AccountStatus
    terms_of_service: str | None
    eab_kid: str | None
    ca_bundle: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "directory": self.directory_url,
            "emails": list(self.emails),
            "key_type": self.key_type,
            "uri": self.uri,
            "status": self.status.value,
            "terms_of_service": self.terms_of_service,
            "eab_kid": self.eab_kid,
            "private_ca_bundle": bool(self.ca_bundle),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Certificate:
    id: int
    names: tuple[str, ...]
    status: CertificateStatus
    account_id: int
    challenge: ChallengeType
    key_type: str
    key_policy: KeyPolicy
    subject: dict[str, str]
    created_at: datetime
    updated_at: datetime
    serial: str | None = None
    issuer: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    fingerprint_sha256: str | None = None
    order_url: str | None = None
    cert_pem: str | None = None
    chain_pem: str | None = None
    revocation_reason: str | None = None
    revoked_at: datetime | None = None
    renew_at: datetime | None = None
    renew_before_days: float | None = None  # None: the global policy
    renewal_reason: RenewalReason | None = None
    alarm_since: datetime | None = None  # its issuance or renewal keeps failing
    alarm_message: str | None = None  # the last error
    alarm_ack_until: datetime | None = None  # a person muted the alarm until then ...
    alarm_ack_by: str | None = None  # ... who
    alarm_ack_reason: str | None = None  # ... and why
    notify_to: tuple[str, ...] = ()  # its own mail recipients (empty: the global list)
    ari_next_check: datetime | None = None
    profile: str | None = None
    fallback_account_ids: tuple[int, ...] = ()  # tried in order when a CA fails
    dns_account_id: int | None = None  # dns-01: None means the zone's default DNS account
    dns_manual: bool = False  # dns-01: a person writes the TXT records
    next_try_at: datetime | None = None  # failing: when the next order is tried
    disabled: bool = False  # a person stopped its retries and renewal (`cert disable`)
    label: str | None = None  # what people call it (Parallels RAS's "name")
    description: str | None = None
    keystore_type: str | None = None  # the download format it defaults to (an ExportFormat)
    has_keystore_password: bool = False  # a password for those downloads is kept, sealed
    client_id: int | None = None  # the client it was obtained for
    csr_pem: str | None = None  # a device's own CSR (key policy csr: no key held here)
    device_renews: bool = False  # the device sends a fresh CSR; the scheduler leaves it
    next_csr_pem: str | None = None  # a device's fresh CSR, until its certificate arrives

    @property
    def account_ids(self) -> tuple[int, ...]:
        """Every account that may obtain it, in the order they are tried."""
        return (self.account_id, *self.fallback_account_ids)

    @property
    def common_name(self) -> str:
        return self.names[0]

    def effective_status(self, now: datetime) -> CertificateStatus:
        if (
            self.status is CertificateStatus.VALID
            and self.not_after is not None
            and self.not_after <= now
        ):
            return CertificateStatus.EXPIRED
        return self.status

    def days_left(self, now: datetime) -> int | None:
        if self.not_after is None:
            return None
        return int((self.not_after - now).total_seconds() // 86400)


@dataclass(frozen=True)
class NewCertificate:
    """A request that passed every check, with its key sealed: what the store keeps."""

    names: Sequence[str]
    account_id: int
    challenge: ChallengeType
    key_type: str
    key_policy: KeyPolicy
    subject: dict[str, str]
    key_sealed: bytes | None
    renew_before_days: float | None = None
    profile: str | None = None
    fallback_account_ids: Sequence[int] = ()
    dns_account_id: int | None = None
    dns_manual: bool = False
    label: str | None = None
    description: str | None = None
    keystore_type: str | None = None
    keystore_password_sealed: bytes | None = None
    client_id: int | None = None
    csr_pem: str | None = None
    device_renews: bool = False


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate as the CA sent it, described for the store."""

    cert_pem: str
    chain_pem: str
    serial: str
    issuer: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    order_url: str


@dataclass(frozen=True)
class Order:
    """One attempt to obtain a certificate: a job for the workers and a record for the user."""

    id: int
    certificate_id: int
    state: OrderState
    order_url: str | None
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    error: AcmeProblem | None = None
    error_message: str | None = None
    finished_at: datetime | None = None
    started_at: datetime | None = None  # first taken by a worker; created_at is when queued
    # Its holder took it from one that never let it go: that one may have created an
    # order at the CA and died before recording it.
    taken_over: bool = False
    purpose: OrderPurpose = OrderPurpose.ISSUE
    replaces: str | None = None  # the ARI certID sent with the new order
    account_id: int | None = None  # None: the certificate's first account
    lease_owner: str | None = None
    lease_until: datetime | None = None
    next_run_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "purpose": self.purpose.value,
            "replaces": self.replaces,
            "account_id": self.account_id,
            "order_url": self.order_url,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            # A queued order's next turn (a retry, or held back by a rate-limit budget).
            "next_run_at": (
                self.next_run_at.isoformat() if self.next_run_at and self.state.active else None
            ),
            "error": self.error_message,
            "problem": self.error.to_json() if self.error else None,
        }


@dataclass(frozen=True)
class PastCertificate:
    """A certificate that was replaced: kept so it can still be shown, exported, revoked."""

    id: int
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str | None
    status: str
    replaced_at: datetime
    replaced_because: str

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "fingerprint_sha256": self.fingerprint_sha256,
            "status": self.status,
            "replaced_at": self.replaced_at.isoformat(),
            "replaced_because": self.replaced_because,
        }


class EventKind(StrEnum):
    ISSUED = "issued"
    RENEWED = "renewed"
    ATTEMPT_FAILED = "attempt-failed"  # will be retried
    FAILED = "failed"  # an order failed for good; the certificate is tried again later
    ALARM_RAISED = "alarm-raised"
    ALARM_CLEARED = "alarm-cleared"
    RENEWAL_QUEUED = "renewal-queued"
    RETRY_QUEUED = "retry-queued"  # a failing certificate's next order
    DISABLED = "disabled"  # a person stopped its retries and renewal
    ENABLED = "enabled"
    CA_FALLBACK = "ca-fallback"  # an account's CA failed; the next account takes over
    HELD_BACK = "held-back"  # too many failed validations of a name in the last hour
    AWAITING_DNS = "awaiting-dns"  # manual DNS-01: the records a person must write
    REVOKED = "revoked"  # at the CA, with a reason
    DELETED = "deleted"  # forgotten here (still valid at the CA until it expires)
    DEPLOYED = "deployed"  # its files reached a push target (and it reloaded)
    DEPLOY_FAILED = "deploy-failed"  # a push target failed; tried again until it works
    DEPLOY_CANCELLED = "deploy-cancelled"  # a person stopped a deployment's retries
    INSTALLED = "installed"  # a gateway agent installed it and its reload succeeded
    INSTALL_FAILED = "install-failed"  # ... or not: the agent put the previous files back
    EXPIRING = "expiring"  # entered an expiry threshold (30, 14, 7, 3, 1 days left), once each
    ALARM_ACKNOWLEDGED = "alarm-acknowledged"  # a person muted the alarm until a date
    # The store refused writes for lack of space for a while (recorded once it took writes
    # again; no certificate): store/space.py
    STORE_FULL = "store-full"


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    kind: EventKind
    message: str
    certificate_id: int | None = None
    order_id: int | None = None
    problem: AcmeProblem | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "kind": self.kind.value,
            "certificate_id": self.certificate_id,
            "order_id": self.order_id,
            "message": self.message,
            "problem": self.problem.to_json() if self.problem else None,
        }
