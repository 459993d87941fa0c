"""Certificate requests: every check a request must pass, its key made and sealed, and
the certificate stored with its first order at once. Nothing is stored when a check
fails."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from certbroker.crypto.csr import make_csr
from certbroker.crypto.keys import (
    generate_private_key,
    key_type_of,
    load_private_key,
    private_key_to_pem,
)
from certbroker.domain.errors import UsageError
from certbroker.domain.keys import ExportFormat, KeyPolicy, KeyType
from certbroker.domain.models import (
    DEFAULT_CHALLENGE,
    Account,
    AccountStatus,
    Certificate,
    ChallengeType,
    NewCertificate,
    Order,
)
from certbroker.domain.names import validate_names
from certbroker.domain.subject import Subject
from certbroker.ports import ChallengeSolver
from certbroker.services import audit, idempotency
from certbroker.services.common import ServiceContext
from certbroker.services.leases import lease


@dataclass(frozen=True)
class CertificateRequest:
    names: Sequence[str]
    account: str | None = None
    challenge: ChallengeType = DEFAULT_CHALLENGE
    key_type: KeyType | None = None
    key_policy: KeyPolicy = KeyPolicy.NEW
    key_pem: bytes | None = None  # with KeyPolicy.IMPORTED
    subject: Subject | None = None
    renew_before_days: float | None = None  # None: the global policy
    profile: str | None = None  # an ACME profile the CA advertises
    fallback_accounts: Sequence[str] = ()  # tried in order when the account's CA fails
    dns_account: str | None = None  # dns-01: a DNS account, "manual", or None (by zone)
    label: str | None = None  # what people call it (Parallels RAS's "name")
    description: str | None = None
    keystore_type: ExportFormat | None = None  # downloads default to this format
    keystore_password: str | None = None  # ...and this password, kept sealed


class RequestService:
    def __init__(self, ctx: ServiceContext, solvers: Mapping[ChallengeType, ChallengeSolver]):
        self.ctx = ctx
        self.repo = ctx.repo
        self.solvers = solvers

    def request(
        self, req: CertificateRequest, lease_owner: str | None = None
    ) -> tuple[Certificate, Order]:
        """Validate, then store certificate + key + order at once. Nothing is stored on error."""
        return self.store(self.prepare(req), lease_owner)

    def prepare(self, req: CertificateRequest) -> NewCertificate:
        """Every check a request must pass, and its key; stores nothing."""
        solver = self.solvers.get(req.challenge)
        if solver is None:
            raise UsageError(f"challenge {req.challenge.value} is not set up in this process")
        names = validate_names(req.names, req.challenge)
        account = self.pick_account(req.account)
        choice = solver.check_request(names, req.dns_account)
        if req.key_policy is KeyPolicy.CSR:
            raise UsageError(
                "key policy csr is for a device that sends its own CSR (POST /api/v1/csr); "
                "choose new, reuse or imported"
            )
        if req.key_policy is KeyPolicy.IMPORTED:
            if req.key_pem is None:
                raise UsageError("--key-policy imported needs --key-file PEM")
            key = load_private_key(req.key_pem, "--key-file")
            key_type = key_type_of(key)
            if req.key_type is not None and req.key_type is not key_type:
                raise UsageError(
                    f"--key-file holds an {key_type.value} key but --key-type "
                    f"{req.key_type.value} was given; drop --key-type or use a matching key"
                )
        else:
            if req.key_pem is not None:
                raise UsageError("--key-file is only used with --key-policy imported")
            key_type = req.key_type or KeyType.EC_P256
            key = generate_private_key(key_type)
        subject = req.subject or Subject()
        if req.renew_before_days is not None and not 0 < req.renew_before_days < 10_000:
            raise UsageError(
                f"--renew-before-days {req.renew_before_days:g} is not a number of days "
                "(more than 0); leave it out to use the global policy"
            )
        fallbacks = [self.pick_account(ref) for ref in req.fallback_accounts]
        chosen = [account.id, *(a.id for a in fallbacks)]
        if len(set(chosen)) != len(chosen):
            raise UsageError("an account is named twice in --account; name each once")
        if req.profile is not None:
            self._check_profile(account, req.profile)
        make_csr(key, names, subject)  # proves now that the CSR can be built
        label, description, password_sealed = self._about(req)
        return NewCertificate(
            names=names,
            account_id=account.id,
            challenge=req.challenge,
            key_type=key_type.value,
            key_policy=req.key_policy,
            subject=subject.as_dict(),
            key_sealed=self.ctx.sealer.seal(private_key_to_pem(key)),
            renew_before_days=req.renew_before_days,
            profile=req.profile,
            fallback_account_ids=[a.id for a in fallbacks],
            dns_account_id=choice.dns_account_id,
            dns_manual=choice.dns_manual,
            label=label,
            description=description,
            keystore_type=req.keystore_type.value if req.keystore_type else None,
            keystore_password_sealed=password_sealed,
        )

    def _about(self, req: CertificateRequest) -> tuple[str | None, str | None, bytes | None]:
        """The label, description and sealed keystore password, checked."""
        label = (req.label or "").strip() or None
        if label is not None and len(label) > 200:
            raise UsageError("the label is too long: at most 200 characters")
        description = (req.description or "").strip() or None
        if description is not None and len(description) > 2000:
            raise UsageError("the description is too long: at most 2000 characters")
        password = req.keystore_password or None
        if password is not None:
            if req.keystore_type is None or not req.keystore_type.needs_password:
                raise UsageError(
                    "a keystore password goes with keystore type pkcs12 or jks; choose one"
                )
            if len(password) > 200:
                raise UsageError("the keystore password is too long: at most 200 characters")
        sealed = self.ctx.sealer.seal(password.encode()) if password else None
        return label, description, sealed

    def store(
        self, prepared: NewCertificate, lease_owner: str | None = None
    ) -> tuple[Certificate, Order]:
        """The certificate and its first order; with `lease_owner`, leased to that worker
        from the start (`cert request --wait`), so a running `serve` leaves it alone."""
        now = self.ctx.clock()
        cert, order = self.repo.create_certificate(
            prepared, now, lease_owner, now + lease(), idempotency.current()
        )
        audit.record(
            self.ctx,
            "certificate.request",
            "certificate",
            cert.id,
            {
                "names": list(prepared.names),
                "account_id": prepared.account_id,
                "challenge": prepared.challenge.value,
                "key_type": prepared.key_type,
                "key_policy": prepared.key_policy.value,
                "subject": dict(prepared.subject),
                "profile": prepared.profile,
                "dns_account_id": prepared.dns_account_id,
                "dns_manual": prepared.dns_manual,
                "label": prepared.label,
                "client_id": prepared.client_id,
                "order_id": order.id,
            },
        )
        return cert, order

    def _check_profile(self, account: Account, profile: str) -> None:
        offered = self.ctx.ca_for(account).profiles()
        if not offered:
            raise UsageError(
                f"--profile {profile!r}: the CA of account {account.name!r} "
                f"({account.directory_url}) offers no profiles; leave --profile out"
            )
        if profile not in offered:
            raise UsageError(
                f"--profile {profile!r} is not offered by the CA; choose one of "
                + ", ".join(f"{name} ({about})" for name, about in offered.items())
            )

    def pick_account(self, ref: str | int | None, why_none: str = "") -> Account:
        """The account named, or the only usable one; refuses a deactivated account.
        `why_none`: what to do when several could be meant (default: --account)."""
        if ref is None:
            accounts = self.repo.list_accounts()
            usable = [a for a in accounts if a.status is AccountStatus.VALID]
            if not accounts:
                raise UsageError(
                    "no ACME account yet; register one with `certbroker account register`"
                )
            if not usable:
                names = ", ".join(repr(a.name) for a in accounts)
                raise UsageError(
                    f"every account here ({names}) is deactivated at the CA and cannot order "
                    "certificates; register a new one with `certbroker account register`"
                )
            if len(usable) > 1:
                names = ", ".join(a.name for a in usable)
                raise UsageError(
                    f"several accounts ({names}); " + (why_none or "choose one with --account")
                )
            return usable[0]
        account = self.repo.get_account(ref)
        if account.status is not AccountStatus.VALID:
            raise UsageError(
                f"account {account.name!r} is deactivated at the CA and cannot order "
                "certificates; register a new account and use --account"
            )
        return account
