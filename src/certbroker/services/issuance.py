"""Issuance: a request becomes a certificate through a persisted state machine.

Every step is written to the store before the next starts, and every step is safe to
repeat: on resume the order is read back from the CA and continued from the state the
CA reports, so a killed process never finalizes twice nor loses the private key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from cryptography import x509

from certbroker.crypto.ari import ari_cert_id
from certbroker.crypto.csr import Subject, make_csr
from certbroker.crypto.keys import (
    generate_private_key,
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
from certbroker.domain.models import (
    Account,
    AccountStatus,
    Certificate,
    Order,
    OrderState,
)
from certbroker.domain.names import validate_names
from certbroker.domain.renewal import RenewalWindow
from certbroker.ports import CertificateAuthority
from certbroker.services.common import Progress, ServiceContext, no_progress
from certbroker.services.dns import DnsService
from certbroker.services.order_run import (
    FAULT_ENV,
    LEASE,
    AwaitingDns,
    HeldBack,
    OrderRun,
    describe,
    split_chain,
)
from certbroker.store.repository import LeaseLost, NewCertificate

__all__ = [
    "FAULT_ENV",
    "LEASE",
    "CertificateRequest",
    "HeldBack",
    "IssuanceService",
    "Outcome",
    "RunResult",
    "describe",
    "holder_is_dead",
    "make_owner",
    "split_chain",
]

log = logging.getLogger("certbroker.issuance")

ARI_DEFAULT_RETRY = timedelta(hours=6)  # when the CA sends no Retry-After (RFC 9773 §4.3)
ARI_LONGEST_RETRY = timedelta(days=1)
RENEWAL_RETRY_FIRST = timedelta(minutes=10)  # a renewal that failed transiently, again
RENEWAL_RETRY_MAX = timedelta(hours=6)
LONGEST_WAIT = 60.0  # seconds wait_for sleeps for a retry; a later one is left to serve
CHALLENGE_TYPES = ("http-01", "dns-01")
T = TypeVar("T")


class Outcome(StrEnum):
    ISSUED = "issued"
    FAILED = "failed"
    RETRY = "retry"  # a transient failure; next_run_at says when
    BUSY = "busy"  # another live worker holds the order
    AWAITING = "awaiting"  # manual DNS-01: a person writes the records, then `cert verify`


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
    dns_account: str | None = None  # dns-01: a DNS account, "manual", or None (by zone)


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


class IssuanceService:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        order_timeout: float = 300.0,
        retry_attempts: int = 4,
        renew_before_days: float | None = None,
        validation_cap: int = 3,
        dns: DnsService | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        self.dns = dns  # DNS-01; None in a process that only does http-01
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
        dns_account_id: int | None = None
        dns_manual = False
        if req.challenge == "dns-01":
            if self.dns is None:
                raise UsageError("DNS-01 is not set up in this process")
            dns_account_id, dns_manual = self.dns.check_request(names, req.dns_account)
        elif req.dns_account is not None:
            raise UsageError("--dns-account is only used with --challenge dns-01")
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
                dns_account_id=dns_account_id,
                dns_manual=dns_manual,
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

    def run(
        self,
        order: int | Order,
        owner: str,
        progress: Progress = no_progress,
        *,
        verify: bool = False,
    ) -> RunResult:
        """Advance one order (by ID, or as just claimed) as far as it goes. The caller
        holds the lease. `verify`: a person says the manual DNS records are written."""
        result = self._run(order, owner, progress, verify)
        if not result.order.state.active and self.dns is not None:
            cert = self.repo.get_certificate(result.order.certificate_id)
            if cert.challenge == "dns-01":
                try:
                    self.dns.cleanup(result.order.id)
                except Exception:  # never turns an outcome around; serve retries it
                    log.exception("order %d: removing its TXT records failed", result.order.id)
        return result

    def _run(self, order: int | Order, owner: str, progress: Progress, verify: bool) -> RunResult:
        if isinstance(order, int):
            order = self.repo.get_order(order)
        order_id = order.id
        if not order.state.active:
            return RunResult(
                Outcome.ISSUED if order.state is OrderState.VALID else Outcome.FAILED, order
            )
        try:
            OrderRun(self, order, owner, progress, verify=verify).drive()
        except AwaitingDns as exc:
            with contextlib.suppress(LeaseLost):
                self.repo.await_person(order_id, owner, self.ctx.clock(), str(exc), exc.first)
            return RunResult(Outcome.AWAITING, self.repo.get_order(order_id), str(exc))
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

    def verify(
        self, cert_id: int, owner: str, new_challenge: bool, progress: Progress = no_progress
    ) -> RunResult:
        """Manual DNS-01: check the records a person wrote and go on to the certificate;
        with `new_challenge`, start over with a fresh order (new values to write)."""
        cert = self.repo.get_certificate(cert_id)
        if not cert.dns_manual:
            raise UsageError(
                f"certificate {cert_id} does not use manual DNS validation; nothing to verify"
            )
        order = self.repo.active_order_of(cert_id)
        if order is None or order.state is not OrderState.AWAITING_DNS:
            state = order.state.value if order else "no active order"
            raise UsageError(
                f"certificate {cert_id} is not waiting for DNS records ({state}); "
                f"`certbroker cert renew {cert_id}` starts a new order"
            )
        if not self.claim(order.id, owner):
            raise UsageError(
                f"order {order.id} is being worked on by {order.lease_owner}; try again shortly"
            )
        if new_challenge:
            self.repo.restart_order(order.id, owner, self.ctx.clock())
            progress(f"order {order.id}: starting over with a new order at the CA")
            return self.run(order.id, owner, progress)
        result = self.run(order.id, owner, progress, verify=True)
        if result.outcome in (Outcome.RETRY, Outcome.BUSY):
            return self.wait_for(cert_id, owner, progress)
        return result

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
