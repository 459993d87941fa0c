"""Devices' CSRs: a client sends a CSR, its key never leaves it; only the
names and the public key are taken. With every name on the client's allow-list the
certificate is queued for `serve` at once; otherwise the request is refused, or, where
the client's policy is `approve`, kept for an admin to decide.

A CSR for the names a client already has a certificate for renews that certificate
(the same ID, the old one into the history): the device renews by sending a fresh CSR
when due (by default; innovaphone's devices do it 30 days before expiry), or the
broker renews with the CSR on file where the client or the request says `broker`.
The same key sent again before renewal is due answers the current certificate, and
orders nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certbroker.crypto.device_csr import DeviceCsr, read_device_csr
from certbroker.domain.clients import (
    Client,
    ClientPolicy,
    DeviceRequest,
    Renewal,
    Renewing,
    RequestState,
)
from certbroker.domain.errors import AccessDenied, Conflict, NotFoundError, Throttled, UsageError
from certbroker.domain.keys import KeyPolicy
from certbroker.domain.models import (
    DEFAULT_CHALLENGE,
    Certificate,
    CertificateStatus,
    ChallengeType,
    NewCertificate,
    OrderState,
)
from certbroker.domain.names import validate_names
from certbroker.services import audit
from certbroker.services.common import ServiceContext
from certbroker.services.leases import lease
from certbroker.services.requests import RequestService

if TYPE_CHECKING:
    from certbroker.store.clients import ClientLoad

SHOWN = (CertificateStatus.VALID, CertificateStatus.REVOKED, CertificateStatus.EXPIRED)
PENDING_RETRY = 60  # seconds a client refused for its orders under way is asked to wait
APPROVAL_RETRY = 300  # ... for its requests waiting for an admin


@dataclass(frozen=True)
class ClientLimits:
    """What one client's token may make the broker spend; each is
    a setting (config.py)."""

    zone_certificates: int = 100  # certificates besides one per exact name, with a *.zone
    pending: int = 100  # of its certificates with an order under way
    approvals: int = 20  # of its CSR requests waiting for an admin

    def certificate_cap(self, client: Client) -> int:
        exact, zones = _allowance(client)
        return exact + (self.zone_certificates if zones else 0)

    def new_certificate(self, client: Client, load: ClientLoad) -> None:
        """Refuses a certificate more for `client` beyond its cap (Conflict: waiting does
        not help), or an order more beyond its orders under way (Throttled)."""
        exact, zones = _allowance(client)
        cap = self.certificate_cap(client)
        if load.certificates >= cap:
            setting = "client_zone_certificates, CERTBROKER_CLIENT_ZONE_CERTIFICATES"
            why = (
                f"{exact} for the exact names on its allow-list and {self.zone_certificates} "
                f"for its '*.zone' patterns (setting {setting})"
                if zones
                else f"{exact} for the exact names on its allow-list; it has no '*.zone' "
                f"pattern, so the setting for those ({setting}) adds none"
            )
            raise Conflict(
                f"client {client.name!r} may hold {_count(cap, 'certificate')} and "
                f"has {load.certificates}: {why}; nothing was ordered. Ask for the names of "
                "a certificate it has, or have an admin delete those it no longer needs "
                "(`certbroker cert delete ID`)"
                + (" or raise client_zone_certificates" if zones else "")
            )
        self.new_order(client, load)

    def new_order(self, client: Client, load: ClientLoad) -> None:
        """Refuses an order more for `client` while `pending` of its are under way."""
        if load.obtaining >= self.pending:
            raise Throttled(
                f"client {client.name!r} has {_count(load.obtaining, 'certificate')} being "
                "obtained (orders not yet done), the most setting client_pending_requests "
                "(CERTBROKER_CLIENT_PENDING_REQUESTS) allows; nothing was ordered: send "
                "this again once some of them are issued",
                PENDING_RETRY,
            )

    def new_approval(self, client: Client, load: ClientLoad) -> None:
        """Refuses a request more awaiting an admin while `approvals` of its wait."""
        if load.awaiting >= self.approvals:
            raise Throttled(
                f"client {client.name!r} has {_count(load.awaiting, 'CSR request')} awaiting "
                "an admin's approval, the most setting client_approval_requests "
                "(CERTBROKER_CLIENT_APPROVAL_REQUESTS) allows; nothing was stored: send "
                "this again once an admin approves or denies them (`certbroker approvals "
                "list`)",
                APPROVAL_RETRY,
            )


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' * (n != 1)}"


def _allowance(client: Client) -> tuple[int, bool]:
    """(the exact names on its allow-list, whether it has a '*.zone' pattern or may have
    wildcards)."""
    exact = sum(1 for p in client.allow if "*" not in p)
    return exact, client.wildcard or any(p.startswith("*.") for p in client.allow)


class DeviceService:
    def __init__(
        self, ctx: ServiceContext, requests: RequestService, limits: ClientLimits | None = None
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.requests = requests
        self.limits = limits or ClientLimits()

    # -- a CSR arrives ----------------------------------------------------------------------

    def request_from_csr(
        self,
        client: Client,
        csr: str | bytes,
        challenge: ChallengeType = DEFAULT_CHALLENGE,
        renewal: Renewal | None = None,
    ) -> DeviceRequest:
        """Accept, refuse (AccessDenied; nothing is stored or ordered) or keep for an
        admin a device's CSR. `renewal`: who renews it (None: the client's setting).
        Beyond the client's limits (`ClientLimits`, counted in the transaction that would
        store it) it is refused too: Conflict for a certificate more than it may hold,
        Throttled for an order more while too many are under way, or a request more
        while too many wait for an admin."""
        device = read_device_csr(csr)
        names = validate_names(device.names, challenge)
        refused = client.off_the_list(names)
        if refused and client.policy is not ClientPolicy.APPROVE:
            raise AccessDenied(
                f"client {client.name!r} may not obtain {', '.join(refused)}; "
                f"its allow-list: {', '.join(client.allow) or 'empty'}"
                + (" (wildcards not allowed)" if any(n.startswith("*.") for n in refused) else "")
            )
        renewal = renewal or client.renewal
        certificate, renewing = None, None
        if not refused:
            certificate, renewing = self._accept(client, device, names, challenge, renewal)
        limits = self.limits

        def admit(load: ClientLoad) -> None:
            if certificate is not None:
                limits.new_certificate(client, load)
            elif renewing is not None and renewing.csr_pem is not None:
                limits.new_order(client, load)
            elif refused:
                limits.new_approval(client, load)

        now = self.ctx.clock()
        return self.repo.add_device_request(
            client_id=client.id,
            names=names,
            challenge=challenge.value,
            csr_pem=device.csr_pem.decode(),
            now=now,
            certificate=certificate,
            lease_until=now + lease(),
            renewing=renewing,
            renewal=renewal,
            admit=admit,
        )

    def _accept(
        self,
        client: Client,
        device: DeviceCsr,
        names: list[str],
        challenge: ChallengeType,
        renewal: Renewal,
    ) -> tuple[NewCertificate | None, Renewing | None]:
        """A new certificate for the CSR, or the renewal of the client's certificate for
        the same names."""
        device_renews = renewal is Renewal.DEVICE
        current, first = self.repo.certificates_for(client.id, names, challenge)
        if current is None:
            if first is not None and first.csr_pem and _same_csr_key(first.csr_pem, device):
                # The same CSR again while its first certificate is being obtained (a
                # device or agent that restarted): that one, and no second order.
                return None, Renewing(first.id, None, device_renews)
            if first is not None and self.repo.active_order_of(first.id) is not None:
                raise Conflict(
                    f"certificate {first.id} for these names is being obtained for another "
                    "key; send this CSR again once that has ended"
                )
            return self._new_certificate(client, device, names, challenge, device_renews), None
        now = self.ctx.clock()
        due = current.renew_at is None or current.renew_at <= now
        if not due and current.next_csr_pem is None and _same_key(current, device):
            return None, Renewing(current.id, None, device_renews)  # sent again: no order
        return None, Renewing(current.id, device.csr_pem.decode(), device_renews)

    def _new_certificate(
        self,
        client: Client,
        device: DeviceCsr,
        names: list[str],
        challenge: ChallengeType,
        device_renews: bool,
    ) -> NewCertificate:
        solver = self.requests.solvers.get(challenge)
        if solver is None:
            raise UsageError(f"challenge {challenge.value} is not set up in this process")
        account = self.requests.pick_account(
            client.account_id,
            f"client {client.name!r} has no ACME account of its own; an admin gives it one "
            f"with `certbroker client set {client.name} --account NAME`",
        )
        choice = solver.check_request(names, None)
        return NewCertificate(
            names=names,
            account_id=account.id,
            challenge=challenge,
            key_type=device.key_type,
            key_policy=KeyPolicy.CSR,
            subject={},
            key_sealed=None,
            dns_account_id=choice.dns_account_id,
            dns_manual=choice.dns_manual,
            label=client.name,
            client_id=client.id,
            csr_pem=device.csr_pem.decode(),
            device_renews=device_renews,
        )

    # -- approvals -------------------------------------------------------------------------

    def requests_in(self, state: RequestState | None = None) -> list[DeviceRequest]:
        return self.repo.list_device_requests(state)

    def request(self, request_id: int) -> DeviceRequest:
        return self.repo.get_device_request(request_id)

    def approve(self, request_id: int, by: str) -> DeviceRequest:
        """An admin lets a request for names off a client's allow-list through: its
        certificate is queued for `serve` (or, for names the client has a certificate
        for, that one is renewed)."""
        request = self.repo.get_device_request(request_id)
        if request.state is not RequestState.AWAITING_APPROVAL:  # the store checks again
            raise UsageError(
                f"CSR request {request_id} was decided already ({request.state.value}); a "
                "client sends a new CSR to ask again"
            )
        client = self.repo.get_client(request.client_id)
        device = read_device_csr(self.repo.device_request_csr(request_id))
        challenge = ChallengeType(request.challenge)
        names = validate_names(device.names, challenge)
        renewal = request.renewal or client.renewal
        certificate, renewing = self._accept(client, device, names, challenge, renewal)
        now = self.ctx.clock()
        decided = self.repo.decide_device_request(
            request_id,
            by=by,
            now=now,
            certificate=certificate,
            reason=None,
            lease_until=now + lease(),
            renewing=renewing,
        )
        audit.record(
            self.ctx,
            "approval.approve",
            "device-request",
            request_id,
            {
                "client": client.name,
                "names": list(request.names),
                "certificate_id": decided.certificate_id,
            },
        )
        return decided

    def deny(self, request_id: int, by: str, reason: str) -> DeviceRequest:
        """A denial is final for this request; the client may send another CSR."""
        reason = reason.strip()
        if not reason or len(reason) > 1000:
            raise UsageError("a denial needs a --reason of 1 to 1000 characters, for the client")
        now = self.ctx.clock()
        decided = self.repo.decide_device_request(
            request_id, by=by, now=now, certificate=None, reason=reason, lease_until=now
        )
        audit.record(
            self.ctx,
            "approval.deny",
            "device-request",
            request_id,
            {"client_id": decided.client_id, "names": list(decided.names), "reason": reason},
        )
        return decided

    # -- what a client sees --------------------------------------------------------------------

    def first_state(self, request: DeviceRequest) -> dict[str, Any]:
        """The state of a request just made, without reading it back: a new certificate
        or a renewal is `pending`; a CSR sent again answers its current certificate."""
        if request.state is RequestState.ACCEPTED and request.certificate_id is not None:
            cert = self.repo.get_certificate(request.certificate_id)
            if cert.cert_pem is None or cert.next_csr_pem is not None:
                return {
                    "id": request.id,
                    "names": list(request.names),
                    "certificate_id": cert.id,
                    "state": "pending",
                }
        return self.state(request.id)

    def state(self, request_id: int, client: Client | None = None) -> dict[str, Any]:
        """Where a request stands; with `client`, only its own (another's: not found).

        Accepted: `pending` while the orders it started run, `failed` with the CA's
        problem when the last of them failed (the broker tries again, and it is
        `pending` again), then the certificate's own state, `valid` with the chain."""
        request = self.repo.get_device_request(request_id)
        if client is not None and request.client_id != client.id:
            raise NotFoundError(f"no CSR request with ID {request_id}")
        found: dict[str, Any] = {
            "id": request.id,
            "names": list(request.names),
            "certificate_id": request.certificate_id,
        }
        if request.certificate_id is None or request.state is not RequestState.ACCEPTED:
            return found | {"state": request.state.value, "reason": request.reason}
        try:
            cert = self.repo.get_certificate(request.certificate_id)
        except NotFoundError:
            return found | {"state": "deleted", "reason": "an admin deleted its certificate"}
        accepted_at = request.decided_at or request.created_at
        since = [o for o in self.repo.orders_of(cert.id) if o.created_at >= accepted_at]
        if since and not any(o.state is OrderState.VALID for o in since):
            last = since[-1]
            if last.state.active:
                return found | {"state": "pending"}
            return found | {
                "state": "failed",
                "problem": last.error.to_json() if last.error else None,
                "error": last.error_message,
            }
        return found | self.certificate_view(cert, chain=True)

    def certificate_view(self, cert: Certificate, chain: bool) -> dict[str, Any]:
        """A client's certificate as the client sees it (never a key: it has none here)."""
        status = cert.effective_status(self.ctx.clock())
        found: dict[str, Any] = {
            "certificate_id": cert.id,
            "names": list(cert.names),
            "state": status.value,
            "renewed_by": "device" if cert.device_renews else "broker",
            "renew_at": cert.renew_at.isoformat() if cert.renew_at else None,
        }
        if cert.cert_pem is not None and status in SHOWN:
            found |= {
                "not_before": cert.not_before.isoformat() if cert.not_before else None,
                "not_after": cert.not_after.isoformat() if cert.not_after else None,
                "serial": cert.serial,
            }
            if chain:
                found["chain"] = cert.cert_pem + (cert.chain_pem or "")
        if status is CertificateStatus.FAILED:
            found["error"] = cert.alarm_message
        return found

    def client_certificates(self, client: Client) -> list[dict[str, Any]]:
        """The client's certificates, newest first, without chains."""
        return [
            self.certificate_view(c, chain=False) for c in self.repo.client_certificates(client.id)
        ]

    def client_certificate(self, client: Client, cert_id: int) -> dict[str, Any]:
        """One of the client's certificates with its chain; another's is not found."""
        try:
            cert = self.repo.get_certificate(cert_id)
        except NotFoundError:
            cert = None
        if cert is None or cert.client_id != client.id:
            raise NotFoundError(f"no certificate with ID {cert_id} for client {client.name!r}")
        return self.certificate_view(cert, chain=True)

    def due_renewals(self, client: Client) -> list[dict[str, Any]]:
        """The client's certificates its device should renew now (a fresh CSR for the
        same names): due, and not being renewed with a CSR it already sent."""
        now = self.ctx.clock()
        return [
            self.certificate_view(c, chain=False)
            for c in self.repo.client_certificates(client.id)
            if c.device_renews
            and c.status is CertificateStatus.VALID
            and c.renew_at is not None
            and c.renew_at <= now
            and c.next_csr_pem is None
        ]

    def client_requests(self, client: Client, limit: int = 100) -> list[DeviceRequest]:
        """The client's latest CSR requests, newest first."""
        return self.repo.client_device_requests(client.id, limit)


def _same_csr_key(csr_pem: str, device: DeviceCsr) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = x509.load_pem_x509_csr(csr_pem.encode()).public_key()
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == (
        device.public_key_der
    )


def _same_key(cert: Certificate, device: DeviceCsr) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if cert.cert_pem is None:
        return False
    leaf = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return spki == device.public_key_der
