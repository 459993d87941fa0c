"""The repository as users see it: list, show, export, revoke, delete."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from certbroker.domain.errors import CAError, UsageError
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
from certbroker.services.common import ServiceContext


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
                    }
                    if cert.alarm_since
                    else None
                ),
                "events": [e.to_json() for e in self.repo.list_events(cert_id=cert_id, limit=20)],
            }
        )
        return data

    def alarms(self) -> list[dict[str, Any]]:
        return [
            {
                "certificate_id": cert.id,
                "names": list(cert.names),
                "since": cert.alarm_since.isoformat() if cert.alarm_since else None,
                "last_error": cert.alarm_message,
                "next_try_at": cert.next_try_at.isoformat() if cert.next_try_at else None,
                "disabled": cert.disabled,
            }
            for cert in self.repo.certificates_in_alarm()
        ]

    def events(self, cert_id: int | None = None, since: datetime | None = None) -> list[Event]:
        return self.repo.list_events(cert_id=cert_id, since=since)

    def export(
        self, cert_id: int, fmt: ExportFormat, out: Path, password: str | None
    ) -> list[Path]:
        cert = self.repo.get_certificate(cert_id)
        if cert.cert_pem is None:
            raise UsageError(
                f"certificate {cert_id} has not been issued ({cert.status.value}); "
                "nothing to export yet"
            )
        sealed = self.repo.certificate_key_sealed(cert_id)
        key_pem = self.ctx.sealer.unseal(sealed) if sealed is not None else None
        from certbroker.crypto.export import ExportBundle, write_export

        bundle = ExportBundle(
            cert_pem=cert.cert_pem.encode(),
            chain_pem=(cert.chain_pem or "").encode(),
            key_pem=key_pem,
            alias=cert.common_name,
        )
        return write_export(bundle, fmt, out, password)

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
        return self.repo.get_certificate(cert_id)

    def delete(self, cert_id: int) -> Certificate:
        cert = self.repo.get_certificate(cert_id)
        self.repo.delete_certificate(cert_id)
        return cert
