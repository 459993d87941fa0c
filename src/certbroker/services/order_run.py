"""One pass over one order under its lease: the steps of the state machine.

Each step is recorded in the store before the next starts, so a process killed at any
point leaves an order the next holder resumes (see docs/architecture.md). The service
that owns policy and retries is `IssuanceService` (services/issuance.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from hashlib import sha256
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certbroker.crypto.ari import ari_cert_id
from certbroker.crypto.csr import Subject, make_csr
from certbroker.crypto.keys import (
    PrivateKey,
    generate_private_key,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
)
from certbroker.domain.dns import txt_value
from certbroker.domain.errors import AcmeProblem, PermanentError, TransientError
from certbroker.domain.keys import KeyPolicy, KeyType
from certbroker.domain.limits import VALIDATION_WINDOW, validation_allowed_at
from certbroker.domain.models import AccountStatus, Order, OrderPurpose, OrderState
from certbroker.domain.renewal import plan_renewal
from certbroker.ports import AuthorizationInfo, CertificateAuthority, OrderInfo
from certbroker.services.common import Progress
from certbroker.store.repository import IssuedCertificate

if TYPE_CHECKING:
    from certbroker.services.issuance import IssuanceService

log = logging.getLogger("certbroker.issuance")

LEASE = timedelta(seconds=120)
FAULT_ENV = "CERTBROKER_FAULT_KILL_AFTER"  # test hook: SIGKILL this process after a step


class AwaitingDns(Exception):
    """Manual DNS-01: the run stops until a person writes the records (`cert verify`)."""

    def __init__(self, message: str, *, first: bool) -> None:
        super().__init__(message)
        self.first = first  # the records were just shown; False: still not there


class HeldBack(Exception):
    """Not now: our own cap on failed validations; try again at `until`."""

    def __init__(self, until: datetime, message: str) -> None:
        super().__init__(message)
        self.until = until


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


class OrderRun:
    """One pass over one order, holding its lease."""

    def __init__(
        self,
        svc: IssuanceService,
        order: Order,
        owner: str,
        progress: Progress,
        *,
        verify: bool = False,
    ) -> None:
        self.svc = svc
        self.verify = verify  # `cert verify`: a person says the manual records are there
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
                if self.order.state is OrderState.AWAITING_DNS:
                    raise self._expired(str(exc)) from None
                # The CA forgot the order (expired, or the CA was reset): start a new one.
                self.progress(f"the CA no longer has order {self.order.order_url} ({exc})")
                return self._new_order()
            self.progress(f"resuming order {info.url} ({info.status})")
            if self.order.state is OrderState.AWAITING_DNS and info.status == "invalid":
                raise self._expired(f"the CA marked it {info.status}")
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

    def _expired(self, why: str) -> AwaitingDns:
        return AwaitingDns(
            f"the CA's order for these TXT records is no longer usable ({why}); run "
            f"`certbroker cert verify {self.cert.id} --new-challenge` for new values",
            first=False,
        )

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
        dns_items = []  # (identifier, '*.example.com' for a wildcard; key authorization)
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
            dns_items.append((authz.identifier, key_auth))
            if chall.status == "pending":
                to_answer.append((authz, chall))
        # Present every challenge before answering any.
        if self.cert.challenge == "dns-01":
            self._present_dns(dns_items)
        else:
            now = self.svc.ctx.clock()
            self.repo.present_challenges(self.order.id, self.owner, rows, now, now + LEASE)
            self._touched = time.monotonic()
            _fault(OrderState.PRESENTED.value)
        for authz in authzs:
            if authz.status == "valid":
                self.progress(f"{authz.identifier}: already authorized")
            elif authz.status == "pending":
                self.progress(f"{authz.identifier}: {self.cert.challenge} challenge presented")
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

    def _present_dns(self, items: list[tuple[str, str]]) -> None:
        """Write (or, in manual mode, show) the TXT records, and wait until they are
        visible where the CA will look."""
        dns = self.svc.dns
        if dns is None:
            raise PermanentError("DNS-01 is not set up in this process")
        if not items:  # every name is still authorized at the CA: nothing to write or wait for
            self.record(state=OrderState.PRESENTED)
            return
        if self.cert.dns_manual and self.order.state is OrderState.AWAITING_DNS:
            if not self.verify:
                raise AwaitingDns(
                    "waiting for the TXT records (`certbroker cert verify`)", first=False
                )
            records = self.repo.dns_records_of(self.order.id)
            expected = {(identifier, txt_value(key_auth)) for identifier, key_auth in items}
            if not expected <= {(r.identifier, r.value) for r in records}:
                raise self._expired("its challenges changed")
            try:
                dns.wait_visible(records, self.progress, self._keep_lease)
            except TransientError as exc:
                raise AwaitingDns(f"not yet: {exc}", first=False) from None
        else:
            records = dns.present(self.cert, self.order.id, self.owner, items, self.progress)
            _fault("dns-written")
            if self.cert.dns_manual:
                self.record(state=OrderState.AWAITING_DNS)
                shown = "; ".join(f"{r.name} TXT {r.value!r}" for r in records)
                raise AwaitingDns(
                    f"write these TXT records, then run `certbroker cert verify "
                    f"{self.cert.id}`: {shown}",
                    first=True,
                )
            dns.wait_visible(records, self.progress, self._keep_lease)
        self.record(state=OrderState.PRESENTED)

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
            self._keep_lease()  # while the CA works
            info = self.ca.get_order(info.url)

    def _keep_lease(self) -> None:
        """Renew the lease when a quarter of it has passed since the last write, so a
        long wait (the CA, DNS propagation) never lets another worker take the order."""
        if time.monotonic() - self._touched > LEASE.total_seconds() / 4:
            self.record()

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
