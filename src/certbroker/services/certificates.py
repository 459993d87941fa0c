"""The repository as users see it: list, show, export, revoke, delete."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from certbroker.domain.access import Action, Principal, require, require_visible
from certbroker.domain.errors import CAError, StoreFull, UsageError
from certbroker.domain.keys import ExportFormat, RevocationReason
from certbroker.domain.models import (
    Account,
    AccountStatus,
    Certificate,
    CertificateStatus,
    ChallengeType,
    Event,
    Order,
)
from certbroker.ports import ChallengeSolver
from certbroker.services import audit
from certbroker.services.common import ServiceContext

MEDIA_TYPES = {
    ExportFormat.PEM: "application/zip",
    ExportFormat.FULLCHAIN: "application/pem-certificate-chain",
    ExportFormat.COMBINED: "application/x-pem-file",
    ExportFormat.DER: "application/pkix-cert",
    ExportFormat.PKCS12: "application/pkcs12",
    ExportFormat.JKS: "application/x-java-keystore",
}


@dataclass(frozen=True)
class ExportedFile:
    """One download: pem is a zip of certbot's live/ files."""

    filename: str
    media_type: str
    data: bytes


class CertificateService:
    def __init__(
        self, ctx: ServiceContext, solvers: Mapping[ChallengeType, ChallengeSolver]
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.solvers = solvers

    def search(
        self, status: CertificateStatus | None = None, expiring_within_days: int | None = None
    ) -> list[Certificate]:
        if expiring_within_days is not None and expiring_within_days < 0:
            raise UsageError("--expiring-within takes a number of days, 0 or more")
        within = None if expiring_within_days is None else timedelta(days=expiring_within_days)
        return self.repo.list_certificates(
            now=self.ctx.clock(), status=status, expiring_within=within
        )

    def listing(
        self, status: CertificateStatus | None = None, expiring_within_days: int | None = None
    ) -> list[dict[str, Any]]:
        """`search`, each certificate as `summary` shows it (its account by name)."""
        found = self.search(status, expiring_within_days)
        accounts = {a.id: a for a in self.repo.list_accounts()}
        return [self.summary(c, accounts) for c in found]

    def get(self, cert_id: int) -> Certificate:
        return self.repo.get_certificate(cert_id)

    def summary(
        self, cert: Certificate, accounts: dict[int, Account] | None = None
    ) -> dict[str, Any]:
        now = self.ctx.clock()
        account = (accounts or {}).get(cert.account_id)
        return {
            "id": cert.id,
            "label": cert.label,
            "names": list(cert.names),
            "status": cert.effective_status(now).value,
            "not_before": cert.not_before.isoformat() if cert.not_before else None,
            "not_after": cert.not_after.isoformat() if cert.not_after else None,
            "days_left": cert.days_left(now),
            "serial": cert.serial,
            "account": account.name if account else cert.account_id,
            # Failing: when `serve` tries the next order (None while not failing).
            "next_try_at": cert.next_try_at.isoformat() if cert.next_try_at else None,
            "disabled": cert.disabled,
        }

    def details(self, cert_id: int) -> dict[str, Any]:
        cert = self.repo.get_certificate(cert_id)
        account = self.repo.get_account(cert.account_id)
        orders: list[Order] = self.repo.orders_of(cert_id)
        data = self.summary(cert, {account.id: account})
        data.update(
            {
                "description": cert.description,
                "keystore_type": cert.keystore_type,
                "keystore_password_kept": cert.has_keystore_password,
                "issuer": cert.issuer,
                "key_type": cert.key_type,
                "key_policy": cert.key_policy.value,
                "challenge": cert.challenge.value,
                "subject": cert.subject,
                "fingerprint_sha256": cert.fingerprint_sha256,
                "order_url": cert.order_url,
                "revocation_reason": cert.revocation_reason,
                "revoked_at": cert.revoked_at.isoformat() if cert.revoked_at else None,
                "created_at": cert.created_at.isoformat(),
                "renew_at": cert.renew_at.isoformat() if cert.renew_at else None,
                "renewal_reason": cert.renewal_reason.value if cert.renewal_reason else None,
                "renew_before_days": cert.renew_before_days,
                "notify_to": list(cert.notify_to),  # its own mail recipients
                "profile": cert.profile,
                **self.solvers[cert.challenge].describe(cert),
                # The TXT records of the current order (manual mode: the ones to write).
                "dns_records": [
                    r.to_json()
                    for o in orders
                    if o.state.active
                    for r in self.repo.dns_records_of(o.id)
                ],
                "fallback_accounts": [
                    self.repo.get_account(i).name for i in cert.fallback_account_ids
                ],
                "attempts": [o.to_json() for o in orders],
                "history": [h.to_json() for h in self.repo.history_of(cert_id)],
                "alarm": (
                    {
                        "since": cert.alarm_since.isoformat(),
                        "last_error": cert.alarm_message,
                        "next_try_at": data["next_try_at"],
                        "acknowledged": acknowledgement(cert),
                    }
                    if cert.alarm_since
                    else None
                ),
                "events": [e.to_json() for e in self.repo.list_events(cert_id=cert_id, limit=20)],
            }
        )
        return data

    def events(
        self, cert_id: int | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[Event]:
        """Oldest first; with `limit`, the newest `limit` of them."""
        return self.repo.list_events(cert_id=cert_id, since=since, limit=limit)

    def export(
        self, cert_id: int, fmt: ExportFormat, out: Path, password: str | None
    ) -> list[Path]:
        """Write the files of `fmt` to `out`; a keystore without a password given takes
        the one kept with the certificate."""
        from certbroker.crypto.export import write_export

        cert = self.repo.get_certificate(cert_id)
        bundle = self._bundle(cert)
        self._record_export(cert, fmt, bundle, {"out": str(out)})
        return write_export(bundle, fmt, out, self._password(cert_id, fmt, password))

    def _record_export(
        self, cert: Certificate, fmt: ExportFormat, bundle: Any, more: dict[str, Any]
    ) -> None:
        """An export that holds the private key goes into the audit log before the key
        leaves (a record that cannot be written stops it); one without is not recorded."""
        if bundle.key_pem is None or not (fmt.needs_key or fmt is ExportFormat.PEM):
            return
        try:
            audit.record(
                self.ctx,
                "certificate.export-key",
                "certificate",
                cert.id,
                {"names": list(cert.names), "format": fmt.value, "serial": cert.serial, **more},
            )
        except StoreFull as exc:  # the key is kept; what holds no key can still be exported
            raise exc.doing(
                f"the private key of certificate {cert.id} was not exported: its export must "
                "be in the audit log first (fullchain and der hold no key and need no record)"
            ) from None

    def _password(self, cert_id: int, fmt: ExportFormat, given: str | None) -> str | None:
        if given or not fmt.needs_password:
            return given
        sealed = self.repo.keystore_password_sealed(cert_id)
        if sealed is None:
            return None  # the export says the password is missing
        return self.ctx.sealer.unseal(sealed).decode()

    def _bundle(self, cert: Certificate) -> Any:
        from certbroker.crypto.export import ExportBundle

        if cert.cert_pem is None:
            raise UsageError(
                f"certificate {cert.id} has not been issued ({cert.status.value}); "
                "nothing to export yet"
            )
        sealed = self.repo.certificate_key_sealed(cert.id)
        return ExportBundle(
            cert_pem=cert.cert_pem.encode(),
            chain_pem=(cert.chain_pem or "").encode(),
            key_pem=self.ctx.sealer.unseal(sealed) if sealed is not None else None,
            alias=cert.common_name,
        )

    def download(
        self, by: Principal, cert_id: int, fmt: ExportFormat | None, password: str | None
    ) -> ExportedFile:
        """One download, for every entry point: a caller that may read; a name-limited
        one only its own certificates (another does not exist for it); a format holding
        the key only a role that may have keys."""
        require(by, Action.READ)
        require_visible(by, self.repo.get_certificate(cert_id).names, cert_id)
        chosen = self.download_format(cert_id, fmt)
        if self.export_holds_key(cert_id, chosen):
            require(by, Action.READ_KEY)
        return self.export_file(cert_id, chosen, password)

    def download_format(self, cert_id: int, fmt: ExportFormat | None) -> ExportFormat:
        """The format asked for, else the keystore type kept with the certificate, else
        the full chain."""
        if fmt is not None:
            return fmt
        cert = self.repo.get_certificate(cert_id)
        return ExportFormat(cert.keystore_type) if cert.keystore_type else ExportFormat.FULLCHAIN

    def export_holds_key(self, cert_id: int, fmt: ExportFormat) -> bool:
        """Whether `fmt` of this certificate carries its private key (pem does when the
        key is held here)."""
        if fmt.needs_key:
            return True
        return fmt is ExportFormat.PEM and self.repo.certificate_key_sealed(cert_id) is not None

    def export_file(self, cert_id: int, fmt: ExportFormat, password: str | None) -> ExportedFile:
        """The download of one format; a keystore without a password given takes the one
        kept with the certificate."""
        from certbroker.crypto.export import render_export

        cert = self.repo.get_certificate(cert_id)
        bundle = self._bundle(cert)
        self._record_export(cert, fmt, bundle, {"download": True})
        files = render_export(bundle, fmt, self._password(cert_id, fmt, password))
        stem = cert.common_name.replace("*", "wildcard")
        if fmt is ExportFormat.PEM:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data, mode in files:
                    info = zipfile.ZipInfo(f"{stem}/{name}")
                    info.external_attr = (0o100000 | mode) << 16
                    archive.writestr(info, data)
            return ExportedFile(f"{stem}.zip", MEDIA_TYPES[fmt], buffer.getvalue())
        name, data, _ = files[0]
        suffix = name.partition(".")[2]
        return ExportedFile(f"{stem}.{suffix}", MEDIA_TYPES[fmt], data)

    def tls_material(self, cert_id: int) -> tuple[str, bytes, bytes]:
        """(fingerprint, full chain PEM, private key PEM) of an issued certificate whose key
        is held here: what the console's own HTTPS serves (never shown to anyone)."""
        cert = self.repo.get_certificate(cert_id)
        sealed = self.repo.certificate_key_sealed(cert_id)
        if cert.cert_pem is None or sealed is None or cert.fingerprint_sha256 is None:
            raise UsageError(
                f"certificate {cert_id} cannot serve the console: it is not issued, or its "
                "key is not held here"
            )
        chain = (cert.cert_pem + (cert.chain_pem or "")).encode()
        return cert.fingerprint_sha256, chain, self.ctx.sealer.unseal(sealed)

    def chain(self, cert_id: int) -> str:
        """The certificate and its intermediates, PEM: what a server presents."""
        cert = self.repo.get_certificate(cert_id)
        if cert.cert_pem is None:
            raise UsageError(
                f"certificate {cert_id} has not been issued ({cert.status.value}); no chain yet"
            )
        return cert.cert_pem + (cert.chain_pem or "")

    def revoke(self, cert_id: int, reason: RevocationReason) -> Certificate:
        cert = self.repo.get_certificate(cert_id)
        if cert.status is CertificateStatus.REVOKED:
            raise UsageError(f"certificate {cert_id} is already revoked")
        if cert.cert_pem is None:
            raise UsageError(
                f"certificate {cert_id} was never issued ({cert.status.value}); "
                "there is nothing to revoke — use `certbroker cert delete` to forget it"
            )
        account = self.repo.get_account(cert.account_id)
        if account.status is AccountStatus.VALID:
            ca = self.ctx.ca_for(account)
        else:
            # A deactivated account cannot sign; the certificate's own key can (RFC 8555 7.6).
            sealed = self.repo.certificate_key_sealed(cert_id)
            if sealed is None:
                raise UsageError(
                    f"account {account.name!r} is deactivated and the certificate's key is not "
                    "held here, so nothing can sign the revocation"
                )
            from certbroker.crypto.keys import load_private_key

            cert_key = load_private_key(self.ctx.sealer.unseal(sealed))
            ca = self.ctx.ca_factory(account.directory_url, cert_key, None, account.ca_bundle)
        try:
            ca.revoke(cert.cert_pem.encode(), reason.code)
        except CAError as exc:
            if exc.problem is None or exc.problem.code != "alreadyRevoked":
                raise
        self.repo.mark_revoked(cert_id, reason.value, self.ctx.clock())
        audit.record(
            self.ctx,
            "certificate.revoke",
            "certificate",
            cert_id,
            {"names": list(cert.names), "serial": cert.serial, "reason": reason.value},
        )
        return self.repo.get_certificate(cert_id)

    def delete(self, cert_id: int) -> Certificate:
        cert = self.repo.get_certificate(cert_id)
        self.repo.delete_certificate(cert_id, self.ctx.clock())
        audit.record(
            self.ctx,
            "certificate.delete",
            "certificate",
            cert_id,
            {"names": list(cert.names), "serial": cert.serial, "status": cert.status.value},
        )
        return cert


def acknowledgement(cert: Certificate) -> dict[str, Any] | None:
    """Who muted the certificate's alarm, until when and why (None: not muted)."""
    if cert.alarm_ack_until is None:
        return None
    return {
        "until": cert.alarm_ack_until.isoformat(),
        "by": cert.alarm_ack_by,
        "reason": cert.alarm_ack_reason,
    }
