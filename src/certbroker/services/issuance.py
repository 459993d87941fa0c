"""Issuance: a request becomes a certificate through a persisted state machine.

Every step is written to the store before the next starts, and every step is safe to
repeat: on resume the order is read back from the CA and continued from the state the
CA reports, so a killed process never finalizes twice nor loses the private key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from hashlib import sha256
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certbroker.crypto.ari import ari_cert_id
from certbroker.crypto.csr import Subject, make_csr
from certbroker.crypto.keys import (
    PrivateKey,
    generate_private_key,
    key_matches_certificate,
    key_type_of,
    load_private_key,
    private_key_to_pem,
)
from certbroker.domain.errors import (
    AcmeProblem,
    CAError,
    NotFoundError,
    PermanentError,
    TransientError,
    UsageError,
)
from certbroker.domain.keys import KeyPolicy, KeyType
from certbroker.domain.limits import VALIDATION_WINDOW, validation_allowed_at
from certbroker.domain.models import (
    Account,
    AccountStatus,
    Certificate,
    Order,
    OrderPurpose,
    OrderState,
)
from certbroker.domain.names import validate_names
from certbroker.domain.renewal import RenewalWindow, plan_renewal
from certbroker.ports import AuthorizationInfo, CertificateAuthority, OrderInfo
from certbroker.services.common import Progress, ServiceContext, no_progress
from certbroker.store.repository import IssuedCertificate, LeaseLost, NewCertificate

log = logging.getLogger("certbroker.issuance")

LEASE = timedelta(seconds=120)
ARI_DEFAULT_RETRY = timedelta(hours=6)  # when the CA sends no Retry-After (RFC 9773 §4.3)
ARI_LONGEST_RETRY = timedelta(days=1)
RENEWAL_RETRY_FIRST = timedelta(minutes=10)  # a renewal that failed transiently, again
RENEWAL_RETRY_MAX = timedelta(hours=6)
LONGEST_WAIT = 60.0  # seconds wait_for sleeps for a retry; a later one is left to serve
FAULT_ENV = "CERTBROKER_FAULT_KILL_AFTER"  # test hook: SIGKILL this process after a step
CHALLENGE_TYPES = ("http-01",)
T = TypeVar("T")


class HeldBack(Exception):
    """Not now: our own cap on failed validations; try again at `until`."""

    def __init__(self, until: datetime, message: str) -> None:
        super().__init__(message)
        self.until = until


class Outcome(StrEnum):
    ISSUED = "issued"
    FAILED = "failed"
    RETRY = "retry"  # a transient failure; next_run_at says when
    BUSY = "busy"  # another live worker holds the order


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    order: Order
    message: str = ""


@dataclass(frozen=True)
class CertificateRequest:
    names: Sequence[str]
    account: str | None = None
    challenge: str = "http-01"
    key_type: KeyType | None = None
    key_policy: KeyPolicy = KeyPolicy.NEW
    key_pem: bytes | None = None  # with KeyPolicy.IMPORTED
    subject: Subject | None = None
    renew_before_days: float | None = None  # None: the global policy
    profile: str | None = None  # an ACME profile the CA advertises
    fallback_accounts: Sequence[str] = ()  # tried in order when the account's CA fails


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed every check, with its key already sealed."""

    new: NewCertificate


def make_owner(label: str = "") -> str:
    """A lease owner: host and PID (so a dead local holder can be recognised) and a nonce."""
    suffix = f":{label}" if label else ""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}{suffix}"


def holder_is_dead(owner: str | None) -> bool:
    """True when `owner` is a process on this host that no longer runs."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _fault(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def split_chain(fullchain: str) -> tuple[str, str]:
    marker = "-----END CERTIFICATE-----"
    blocks = [b.strip() + "\n" + marker + "\n" for b in fullchain.split(marker) if b.strip()]
    if not blocks:
        raise PermanentError("the CA sent no certificate in PEM form")
    return blocks[0], "".join(blocks[1:])


def describe(cert_pem: str, chain_pem: str, order_url: str) -> IssuedCertificate:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return IssuedCertificate(
        cert_pem=cert_pem,
        chain_pem=chain_pem,
        serial=format(cert.serial_number, "x"),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        order_url=order_url,
    )


class IssuanceService:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        order_timeout: float = 300.0,
        retry_attempts: int = 4,
        renew_before_days: float | None = None,
        validation_cap: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.order_timeout = order_timeout
        self.retry_attempts = retry_attempts
        self.renew_before_days = renew_before_days  # the global policy; None: 1/3 of lifetime
        self.validation_cap = validation_cap  # failed validations per name and hour
        self.sleep = sleep

    # -- the request -----------------------------------------------------------------------

    def request(
        self, req: CertificateRequest, lease_owner: str | None = None
    ) -> tuple[Certificate, Order]:
        """Validate, then store certificate + key + order at once. Nothing is stored on error."""
        return self.store(self.prepare(req), lease_owner)

    def prepare(self, req: CertificateRequest) -> PreparedRequest:
        """Every check a request must pass, and its key; stores nothing."""
        if req.challenge not in CHALLENGE_TYPES:
            raise UsageError(
                f"challenge {req.challenge!r} is not available; choose one of "
                f"{', '.join(CHALLENGE_TYPES)}"
            )
        names = validate_names(req.names, req.challenge)
        account = self._pick_account(req.account)
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
        fallbacks = [self._pick_account(ref) for ref in req.fallback_accounts]
        chosen = [account.id, *(a.id for a in fallbacks)]
        if len(set(chosen)) != len(chosen):
            raise UsageError("an account is named twice in --account; name each once")
        if req.profile is not None:
            self._check_profile(account, req.profile)
        make_csr(key, names, subject)  # proves now that the CSR can be built
        return PreparedRequest(
            NewCertificate(
                names=names,
                account_id=account.id,
                challenge=req.challenge,
                key_type=key_type.value,
                key_policy=req.key_policy.value,
                subject=subject.as_dict(),
                key_sealed=self.ctx.sealer.seal(private_key_to_pem(key)),
                renew_before_days=req.renew_before_days,
                profile=req.profile,
                fallback_account_ids=[a.id for a in fallbacks],
            )
        )

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

    def store(
        self, prepared: PreparedRequest, lease_owner: str | None = None
    ) -> tuple[Certificate, Order]:
        now = self.ctx.clock()
        return self.repo.create_certificate(prepared.new, now, lease_owner, now + LEASE)

    def _pick_account(self, ref: str | None) -> Account:
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
                raise UsageError(f"several accounts ({names}); choose one with --account")
            return usable[0]
        account = self.repo.get_account(ref)
        if account.status is not AccountStatus.VALID:
            raise UsageError(
                f"account {account.name!r} is deactivated at the CA and cannot order "
                "certificates; register a new account and use --account"
            )
        return account

    def new_order_for(self, cert_id: int, lease_owner: str | None = None) -> Order:
        """A fresh order for an existing certificate (retry after failure)."""
        existing = self.repo.active_order_of(cert_id)
        if existing is not None:
            return existing
        return self.repo.add_order(cert_id, self.ctx.clock(), lease_owner, LEASE)

    def ask_renewal_info(
        self, ca: CertificateAuthority, cert: x509.Certificate, now: datetime
    ) -> tuple[RenewalWindow | None, datetime | None]:
        """The CA's ARI window for `cert` and when to ask again, or (None, None) when the
        CA offers no ARI. A CA that fails to answer is asked again in an hour; the
        policy plans the renewal meanwhile."""
        if not ca.supports_renewal_info():
            return None, None
        try:
            info = ca.renewal_info(ari_cert_id(cert))
        except (CAError, ValueError) as exc:
            log.warning("no renewal information from the CA: %s", exc)
            return None, now + timedelta(hours=1)
        wait = info.retry_after if info.retry_after else ARI_DEFAULT_RETRY.total_seconds()
        wait = min(max(wait, 60.0), ARI_LONGEST_RETRY.total_seconds())
        return RenewalWindow(info.start, info.end), now + timedelta(seconds=wait)

    # -- leases ----------------------------------------------------------------------------

    def claim(self, order_id: int, owner: str) -> bool:
        """Take the order's lease when it is free, expired, or held by a dead process."""
        return self.claim_from(order_id, owner, self.repo.get_order(order_id).lease_owner)

    def claim_next(self, owner: str) -> Order | None:
        """Take the next due order with a free or expired lease (the worker pool)."""
        now = self.ctx.clock()
        return self.repo.claim_next(owner, now, now + LEASE)

    def claim_from(self, order_id: int, owner: str, holder: str | None) -> bool:
        """`claim`, for a caller that has just seen the order's holder (the worker pool)."""
        steal = holder if holder_is_dead(holder) else None
        now = self.ctx.clock()
        return self.repo.try_claim(order_id, owner, now, now + LEASE, steal)

    # -- the state machine -------------------------------------------------------------------

    def run(self, order: int | Order, owner: str, progress: Progress = no_progress) -> RunResult:
        """Advance one order (by ID, or as just claimed) as far as it goes. The caller
        holds the lease."""
        if isinstance(order, int):
            order = self.repo.get_order(order)
        order_id = order.id
        if not order.state.active:
            return RunResult(
                Outcome.ISSUED if order.state is OrderState.VALID else Outcome.FAILED, order
            )
        try:
            _OrderRun(self, order, owner, progress).drive()
        except LeaseLost as exc:
            log.info("order %d: %s", order_id, exc)
            return RunResult(Outcome.BUSY, self.repo.get_order(order_id), str(exc))
        except HeldBack as exc:
            log.warning("order %d: %s", order_id, exc)
            with contextlib.suppress(LeaseLost):
                self.repo.hold(order_id, owner, self.ctx.clock(), exc.until, str(exc))
            return RunResult(Outcome.RETRY, self.repo.get_order(order_id), str(exc))
        except PermanentError as exc:
            self._fail(order_id, owner, str(exc), exc.problem)
            return RunResult(Outcome.FAILED, self.repo.get_order(order_id), str(exc))
        except TransientError as exc:
            return self._transient(order_id, owner, exc)
        except CAError as exc:
            self._fail(order_id, owner, str(exc), exc.problem)
            return RunResult(Outcome.FAILED, self.repo.get_order(order_id), str(exc))
        return RunResult(Outcome.ISSUED, self.repo.get_order(order_id))

    def _fail(
        self,
        order_id: int,
        owner: str,
        message: str,
        problem: AcmeProblem | None,
        *,
        transient: bool = False,
    ) -> None:
        """The order failed for good. For a certificate that was issued before, this was
        a renewal: after transient failures the scheduler tries again later (10 minutes,
        doubling with each failed renewal, at most 6 hours), so the broker heals itself
        when the cause goes away; after a permanent one (unauthorized, caa, a
        deactivated account…) renewal stops until a person acts (`cert renew ID`)."""
        now = self.ctx.clock()
        order = self.repo.get_order(order_id)
        cert = self.repo.get_certificate(order.certificate_id)
        fallback = self._next_account(cert, order)
        if fallback is not None:
            used = self.repo.get_account(order.account_id or cert.account_id)
            note = (
                f"account {used.name!r} ({used.directory_url}) failed: {message}; falling "
                f"back to account {fallback.name!r} ({fallback.directory_url})"
            )
            log.warning("order %d: %s", order_id, note)
            with contextlib.suppress(LeaseLost):
                self.repo.fail_order(
                    order_id, owner, now, message, problem, fall_back_to=fallback.id,
                    fallback_message=note,
                )  # fmt: skip
            return
        retry_at: datetime | None = None
        stop = False
        if cert.cert_pem is not None:
            if transient:
                history = self.repo.orders_of(cert.id)
                since_valid = [o for o in history if o.state is OrderState.VALID][-1:]
                last_valid = since_valid[0].id if since_valid else 0
                failed = sum(
                    1 for o in history if o.id > last_valid and o.state is OrderState.FAILED
                )
                wait = min(RENEWAL_RETRY_MAX, RENEWAL_RETRY_FIRST * 2**failed)
                retry_at = now + wait
                message += f"; renewal tried again at {retry_at:%Y-%m-%d %H:%M} UTC"
            else:
                stop = True
                message += f"; renewal stopped until `certbroker cert renew {cert.id}`"
        log.warning("order %d failed: %s", order_id, message)
        with contextlib.suppress(LeaseLost):
            self.repo.fail_order(
                order_id, owner, now, message, problem, retry_renewal_at=retry_at, stop=stop
            )

    def _next_account(self, cert: Certificate, order: Order) -> Account | None:
        """The usable account after the one this order went to, for CA fallback."""
        ids = cert.account_ids
        current = order.account_id or cert.account_id
        later = ids[ids.index(current) + 1 :] if current in ids else ()
        for account_id in later:
            account = self.repo.get_account(account_id)
            if account.status is AccountStatus.VALID:
                return account
        return None

    def _transient(self, order_id: int, owner: str, exc: TransientError) -> RunResult:
        order = self.repo.get_order(order_id)
        attempts = order.attempts + 1
        if attempts >= self.retry_attempts:
            message = f"{exc} (gave up after {attempts} attempts)"
            self._fail(order_id, owner, message, exc.problem, transient=True)
            return RunResult(Outcome.FAILED, self.repo.get_order(order_id), message)
        delay = max(exc.retry_after or 0.0, min(300.0, 2.0**attempts))
        delay *= 1 + secrets.randbelow(250) / 1000  # jitter, so retries spread out
        now = self.ctx.clock()
        try:
            self.repo.retry_later(
                order_id,
                owner,
                now,
                attempts=attempts,
                message=f"{exc}; retrying in {delay:.0f} s",
                problem=exc.problem,
                next_run_at=now + timedelta(seconds=delay),
            )
        except LeaseLost:
            return RunResult(Outcome.BUSY, self.repo.get_order(order_id), str(exc))
        log.info("order %d: %s; retrying in %.1f s", order_id, exc, delay)
        return RunResult(Outcome.RETRY, self.repo.get_order(order_id), str(exc))

    def wait_for(self, cert_id: int, owner: str, progress: Progress = no_progress) -> RunResult:
        """Drive the certificate's active order to the end in this process (CLI --wait)."""
        while True:
            order = self.repo.active_order_of(cert_id)
            if order is None:
                orders = self.repo.orders_of(cert_id)
                if not orders:
                    raise NotFoundError(f"certificate {cert_id} has no order")
                last = orders[-1]
                outcome = Outcome.ISSUED if last.state is OrderState.VALID else Outcome.FAILED
                return RunResult(outcome, last, last.error_message or "")
            if not self.claim(order.id, owner):
                progress(f"order {order.id} is being worked on by {order.lease_owner}; waiting")
                self.sleep(1.0)
                continue
            result = self.run(order.id, owner, progress)
            if result.outcome is Outcome.RETRY:
                due = result.order.next_run_at or self.ctx.clock()
                pause = max(0.0, (due - self.ctx.clock()).total_seconds())
                if pause > LONGEST_WAIT:
                    return result  # not worth blocking a terminal for; serve will retry
                progress(f"{result.message}; retrying in {pause:.0f} s")
                self.sleep(pause)
                continue
            if result.outcome is Outcome.BUSY:
                self.sleep(0.5)
                continue
            if result.outcome is Outcome.FAILED:
                following = self.repo.active_order_of(cert_id)
                if following is not None and following.account_id is not None:
                    account = self.repo.get_account(following.account_id)
                    progress(f"{result.message}; falling back to account {account.name!r}")
                    continue
            return result


class _OrderRun:
    """One pass over one order, holding its lease."""

    def __init__(self, svc: IssuanceService, order: Order, owner: str, progress: Progress) -> None:
        self.svc = svc
        self.repo = svc.repo
        self.order = order
        self.owner = owner
        self.progress = progress
        self.cert = self.repo.get_certificate(order.certificate_id)
        self.deadline = time.monotonic() + svc.order_timeout
        self._touched = time.monotonic()
        self._private_key: PrivateKey | None = None
        account = self.repo.get_account(order.account_id or self.cert.account_id)
        self.account = account
        if account.status is not AccountStatus.VALID:
            raise PermanentError(
                f"account {account.name!r} is deactivated at the CA; "
                "register a new account and request the certificate with it"
            )
        self.ca: CertificateAuthority = svc.ctx.ca_for(account)

    def record(self, *, failed_attempt: bool = False, **values: object) -> None:
        now = self.svc.ctx.clock()
        self.repo.advance_order(
            self.order.id, self.owner, now, now + LEASE, failed_attempt=failed_attempt, **values
        )
        self._touched = time.monotonic()
        if "state" in values:
            _fault(str(values["state"]))

    def drive(self) -> None:
        info = self._current_order()
        while True:
            if info.status == "pending":
                info = self._validate(info)
            elif info.status == "ready":
                info = self._finalize(info)
            elif info.status == "processing":
                info = self._poll(info, lambda i: i.status != "processing")
            elif info.status == "valid" and info.certificate:
                self._download(info)
                return
            elif info.status == "invalid":
                problem = self._authz_problem(info) or info.error
                why = str(problem) if problem else "no reason given"
                raise PermanentError(f"the CA marked the order invalid: {why}", problem)
            else:
                raise PermanentError(f"the CA reports an unknown order status {info.status!r}")

    def _current_order(self) -> OrderInfo:
        if self.order.order_url:
            try:
                info = self.ca.get_order(self.order.order_url)
            except PermanentError as exc:
                # The CA forgot the order (expired, or the CA was reset): start a new one.
                self.progress(f"the CA no longer has order {self.order.order_url} ({exc})")
                return self._new_order()
            self.progress(f"resuming order {info.url} ({info.status})")
            interrupted = self.order.state in (OrderState.PRESENTED, OrderState.ANSWERED)
            if info.status == "invalid" and interrupted:
                # Validation ran while the process that answered it was gone (killed, or
                # its responder with it). That says nothing about the names: order again,
                # within the same attempt budget as any transient failure.
                attempts = self.order.attempts + 1
                if attempts >= self.svc.retry_attempts:
                    return info
                problem = self._authz_problem(info) or info.error
                self.record(
                    attempts=attempts,
                    error=problem,
                    error_message=f"the interrupted order failed validation: {problem}",
                    failed_attempt=True,
                )
                self.progress(
                    f"the interrupted order failed validation ({problem}); ordering again"
                )
                return self._new_order()
            return info
        return self._new_order()

    def _new_order(self) -> OrderInfo:
        self.progress(f"ordering {', '.join(self.cert.names)}")
        replaces = self._replaces()
        info = self.ca.new_order(self.cert.names, replaces=replaces, profile=self.cert.profile)
        self.record(state=OrderState.ORDERED, order_url=info.url, replaces=replaces)
        self.progress(f"order {info.url} created")
        return info

    def _validate(self, info: OrderInfo) -> OrderInfo:
        authzs = [self.ca.get_authorization(url) for url in info.authorizations]
        pending = [a for a in authzs if a.status == "pending"]
        rows = []
        to_answer = []
        for authz in pending:
            chall = authz.challenge(self.cert.challenge)
            if chall is None:
                offered = ", ".join(c.type for c in authz.challenges) or "none"
                raise PermanentError(
                    f"the CA offers no {self.cert.challenge} challenge for {authz.identifier} "
                    f"(offered: {offered})"
                )
            key_auth = self.ca.key_authorization(chall.token)
            rows.append((chall.token, key_auth, authz.identifier, chall.type))
            if chall.status == "pending":
                to_answer.append((authz, chall))
        # Present every challenge before answering any.
        now = self.svc.ctx.clock()
        self.repo.present_challenges(self.order.id, self.owner, rows, now, now + LEASE)
        self._touched = time.monotonic()
        _fault(OrderState.PRESENTED.value)
        for authz in authzs:
            if authz.status == "valid":
                self.progress(f"{authz.identifier}: already authorized")
            elif authz.status == "pending":
                self.progress(f"{authz.identifier}: http-01 challenge presented")
        self._check_validation_cap([authz.identifier for authz, _ in to_answer])
        for _, chall in to_answer:
            self.ca.answer_challenge(chall.url)
        self.record(state=OrderState.ANSWERED)
        for authz, _ in to_answer:
            self.progress(f"{authz.identifier}: challenge answered, the CA is validating")
        info = self._poll(info, lambda i: i.status != "pending")
        if info.status in ("ready", "processing", "valid"):
            for authz in pending:
                self.progress(f"{authz.identifier}: validated")
        return info

    def _replaces(self) -> str | None:
        """For a renewal at a CA with ARI: the certificate it replaces (RFC 9773 §5)."""
        if self.order.purpose is not OrderPurpose.RENEW or self.cert.cert_pem is None:
            return None
        if not self.ca.supports_renewal_info():
            return None
        try:
            return ari_cert_id(x509.load_pem_x509_certificate(self.cert.cert_pem.encode()))
        except ValueError as exc:
            log.info("order %d: not naming the replaced certificate: %s", self.order.id, exc)
            return None

    def _check_validation_cap(self, names: list[str]) -> None:
        """Answer no challenge for a name that failed validation too often this hour."""
        if not names:
            return
        now = self.svc.ctx.clock()
        cap = self.svc.validation_cap
        failures = self.repo.validation_failures_since(
            self.account.id, names, now - VALIDATION_WINDOW
        )
        held = {
            name: at
            for name, times in failures.items()
            if (at := validation_allowed_at(times, now, cap)) is not None
        }
        if held:
            until = max(held.values())
            raise HeldBack(
                until,
                f"{', '.join(held)} failed validation {cap} times in the last hour; not "
                f"asking the CA again before {until:%Y-%m-%d %H:%M:%S} UTC, so its own limit "
                "(Let's Encrypt: 5 an hour) never locks the name out. Fix the cause "
                "(`certbroker events`); `serve` tries again then",
            )

    def _key(self) -> PrivateKey:
        """The key this order's certificate is for, read from the store once per run.

        A renewal under the "new" key policy makes its key on its first run and stores it
        on the order before any CSR carries it; the certificate keeps its current key
        until the new certificate replaces the old one. Other orders use the
        certificate's key (reuse and imported keys stay the same across renewals).
        """
        if self._private_key is not None:
            return self._private_key
        sealed = None
        if self.order.purpose is OrderPurpose.RENEW and self.cert.key_policy == KeyPolicy.NEW:
            sealed = self.repo.order_key_sealed(self.order.id)
            if sealed is None:
                key = generate_private_key(KeyType(self.cert.key_type))
                sealed = self.svc.ctx.sealer.seal(private_key_to_pem(key))
                self.repo.set_order_key(self.order.id, self.owner, sealed, self.svc.ctx.clock())
                self._private_key = key
                return key
        if sealed is None:
            sealed = self.repo.certificate_key_sealed(self.cert.id)
        if sealed is None:
            raise PermanentError(f"certificate {self.cert.id} has no private key stored")
        self._private_key = load_private_key(self.svc.ctx.sealer.unseal(sealed))
        return self._private_key

    def _finalize(self, info: OrderInfo) -> OrderInfo:
        csr = make_csr(self._key(), self.cert.names, Subject(**self.cert.subject))
        self.record(state=OrderState.FINALIZING)
        self.progress("finalizing: CSR sent")
        return self.ca.finalize(info, csr)

    def _download(self, info: OrderInfo) -> None:
        assert info.certificate is not None
        fullchain = self.ca.download_certificate(info.certificate)
        _fault("downloaded")
        cert_pem, chain_pem = split_chain(fullchain)
        leaf = x509.load_pem_x509_certificate(cert_pem.encode())
        if not key_matches_certificate(self._key(), leaf):
            raise PermanentError("the certificate the CA sent does not match the stored key")
        issued = describe(cert_pem, chain_pem, info.url)
        now = self.svc.ctx.clock()
        window, next_check = self.svc.ask_renewal_info(self.ca, leaf, now)
        plan = plan_renewal(
            issued.not_before,
            issued.not_after,
            now=now,
            days_before_expiry=self.cert.renew_before_days or self.svc.renew_before_days,
            ari=window,
        )
        self.repo.store_issued(
            self.cert.id, self.order.id, self.owner, issued, now, plan, next_check
        )
        self.progress(
            f"certificate issued: serial {issued.serial}, valid until "
            f"{issued.not_after:%Y-%m-%d %H:%M} UTC; renewal planned for {plan.describe()}"
        )

    def _poll(self, info: OrderInfo, done: Callable[[OrderInfo], bool]) -> OrderInfo:
        """Short, growing intervals that honour Retry-After; never a fixed one-second sleep."""
        delay = 0.02
        while True:
            if done(info):
                return info
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TransientError(
                    f"the CA left the order {info.status} for {self.svc.order_timeout:.0f} s"
                )
            pause = min(max(delay, info.retry_after or 0.0), remaining)
            self.svc.sleep(pause)
            delay = min(delay * 1.5, 2.0)
            if time.monotonic() - self._touched > LEASE.total_seconds() / 4:
                self.record()  # keep the lease while the CA works
            info = self.ca.get_order(info.url)

    def _authz_problem(self, info: OrderInfo) -> AcmeProblem | None:
        problems = []
        for url in info.authorizations:
            authz: AuthorizationInfo = self.ca.get_authorization(url)
            if authz.problem is not None:
                # The challenge's error names no identifier; the authorization does.
                problem = authz.problem
                if not problem.identifier:
                    problem = dataclasses.replace(problem, identifier=authz.identifier)
                problems.append(problem)
        if not problems:
            return None
        if len(problems) == 1:
            return problems[0]
        return AcmeProblem(
            type="urn:ietf:params:acme:error:compound",
            detail="several names failed validation",
            subproblems=tuple(problems),
        )
