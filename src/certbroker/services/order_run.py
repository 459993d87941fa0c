"""One pass over one order under its lease: the steps of the state machine.

Each step is recorded in the store before the next starts, so a process killed at any
point leaves an order the next holder resumes (see docs/architecture.md). What to do
with the outcome (retry, fail, fall back to another CA) is IssuanceService's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certbroker.crypto.csr import make_csr
from certbroker.crypto.device_csr import read_device_csr
from certbroker.crypto.keys import (
    PrivateKey,
    generate_private_key,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
)
from certbroker.crypto.sealing import Sealer
from certbroker.domain.errors import (
    AcmeProblem,
    AwaitingDns,
    CAError,
    PermanentError,
    TransientError,
)
from certbroker.domain.keys import KeyPolicy, KeyType
from certbroker.domain.limits import VALIDATION_WINDOW, validation_allowed_at
from certbroker.domain.models import (
    Account,
    AccountStatus,
    AcmeStatus,
    Certificate,
    ChallengeType,
    IssuedCertificate,
    Order,
    OrderPurpose,
    OrderState,
)
from certbroker.domain.subject import Subject
from certbroker.ports import (
    AuthorizationInfo,
    CertificateAuthority,
    ChallengeJob,
    ChallengeSolver,
    OrderInfo,
    PendingChallenge,
    Progress,
)
from certbroker.services.budgets import BudgetService
from certbroker.services.common import Clock, fault
from certbroker.services.leases import lease
from certbroker.services.planning import RenewalPlanner
from certbroker.store.repository import Repository

log = logging.getLogger("certbroker.issuance")

# How many of the account's newest orders are looked at for one its dead holder made.
ORPHAN_LOOK_BACK = 200


# The kind of alarm a certificate gets when its renewal is stopped for its client: an
# alarm acknowledged for a CA's failure is raised again by it (store/events.py).
CLIENT_REFUSED = "client-refused"


class HeldBack(Exception):
    """Not now: our own cap on failed validations; try again at `until`."""

    def __init__(self, until: datetime, message: str) -> None:
        super().__init__(message)
        self.until = until


class ClientRefused(Exception):
    """The clients the certificate was made for may no longer have it: nothing is asked
    of the CA, and its renewal stops (IssuanceService). The message says why and what to
    do, for the alarm."""


@dataclass(frozen=True)
class ClientRefusal:
    """Why the broker may no longer obtain a client's certificate."""

    why: str  # "client 'gw1' no longer allows a.example.com (its allow-list: …)"
    fix: str | None  # what a person changes first ("allow the names again"); None: nothing

    def stopped(self, cert: Certificate) -> str:
        """The alarm's message: the renewal (or first issuance) is stopped."""
        what = "renewal" if cert.cert_pem is not None else "issuance"
        delete = f"delete the certificate (`certbroker cert delete {cert.id}`)"
        if self.fix is None:
            return f"{self.why}; {what} stopped — {delete}"
        return (
            f"{self.why}; {what} stopped — {self.fix}, then `certbroker cert enable "
            f"{cert.id}` (it is tried again at once), or {delete}"
        )

    def refused(self, cert: Certificate) -> str:
        """A person's `cert renew ID`, refused before anything is queued."""
        delete = f"delete the certificate (`certbroker cert delete {cert.id}`)"
        if self.fix is None:
            return f"certificate {cert.id} is not renewed: {self.why}; {delete}"
        # A renewal the broker stopped starts again with `cert enable` (`cert renew`
        # would renew it once and leave it disabled).
        then = "enable" if cert.disabled else "renew"
        return (
            f"certificate {cert.id} is not renewed: {self.why}; {self.fix}, then "
            f"`certbroker cert {then} {cert.id}`, or {delete}"
        )


def client_refusal(repo: Repository, cert: Certificate) -> ClientRefusal | None:
    """Why the broker may no longer obtain `cert` for the clients it was made for, as
    they are in the store now; None while one of them may have it, or when it is no
    client's (an operator's own certificate: nothing is read).

    Its clients: the one it was made for (`client_id`) and, for a certificate whose key
    the broker holds, every other client whose agent installs it (one certificate may go
    to many gateways). One of them may have it when it exists, is enabled, and every
    name is on its allow-list as it is now or was let through for this certificate by
    an admin (a CSR request approved; those names never were on the list)."""
    if cert.client_id is None:
        return None
    installing = {i.client_id for i in repo.installations_of_certificate(cert.id)}
    ids = [cert.client_id, *sorted(installing - {cert.client_id})]
    current = repo.clients_by_id(ids)
    reasons: list[str] = []
    fixes: list[str] = []
    for client_id in ids:
        client = current.get(client_id)
        if client is None:
            reasons.append(f"client #{client_id} was deleted")
            continue
        if not client.enabled:
            reasons.append(f"client {client.name!r} is disabled")
            fixes.append("enable the client again")
            continue
        refused = client.off_the_list(cert.names)
        if refused and client_id == cert.client_id:
            approved = repo.approved_names(cert.id, client_id)
            refused = [name for name in refused if name not in approved]
        if not refused:
            return None
        wild = not client.wildcard and any(n.startswith("*.") for n in refused)
        reasons.append(
            f"client {client.name!r} no longer allows {', '.join(refused)} (its allow-list: "
            f"{', '.join(client.allow) or 'empty'}{'; wildcards not allowed' if wild else ''})"
        )
        fixes.append("allow the names again")
    fix = " or ".join(dict.fromkeys(fixes)) or None
    return ClientRefusal("; ".join(reasons), fix)


@dataclass(frozen=True)
class RunContext:
    """Everything one pass over an order uses, handed over by IssuanceService."""

    repo: Repository
    sealer: Sealer
    clock: Clock
    sleep: Callable[[float], None]
    ca_for: Callable[[Account], CertificateAuthority]
    solvers: Mapping[ChallengeType, ChallengeSolver]
    planner: RenewalPlanner
    order_timeout: float  # seconds the CA may take to validate or issue
    retry_attempts: int  # attempts an order gets, counted across resumes
    validation_cap: int  # failed validations per name and hour before we hold back
    budgets: BudgetService  # rate-limit budgets: count new orders, or say to wait


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
        run: RunContext,
        order: Order,
        owner: str,
        progress: Progress,
        *,
        confirmed: bool = False,
    ) -> None:
        self.run = run
        self.repo = run.repo
        self.order = order
        self.owner = owner
        self.progress = progress
        self.confirmed = confirmed  # `cert verify`: a person says the manual records are there
        self.cert: Certificate = self.repo.get_certificate(order.certificate_id)
        # Every order of a client's certificate (first, renewal, retry, resumed) passes
        # here before anything is asked of the CA: the client as it is now decides.
        refusal = client_refusal(self.repo, self.cert)
        if refusal is not None:
            raise ClientRefused(refusal.stopped(self.cert))
        self.solver = run.solvers[self.cert.challenge]
        self.deadline = time.monotonic() + run.order_timeout
        self._touched = time.monotonic()
        self._private_key: PrivateKey | None = None
        account = self.repo.get_account(order.account_id or self.cert.account_id)
        self.account = account
        if account.status is not AccountStatus.VALID:
            raise PermanentError(
                f"account {account.name!r} is deactivated at the CA; "
                "register a new account and request the certificate with it"
            )
        self.ca = run.ca_for(account)

    # -- recording a step ---------------------------------------------------------------------

    def _step(
        self, mark: Callable[[int, str, datetime, datetime], None], state: OrderState
    ) -> None:
        """Record `state` with one of the store's transitions (mark_presented, …)."""
        now = self.run.clock()
        mark(self.order.id, self.owner, now, now + lease())
        self._touched = time.monotonic()
        fault(state.value)

    def _keep_lease(self) -> None:
        """Renew the lease when a quarter of it has passed since the last write, so a
        long wait (the CA, DNS propagation) never lets another worker take the order."""
        if time.monotonic() - self._touched > lease().total_seconds() / 4:
            now = self.run.clock()
            self.repo.keep_lease(self.order.id, self.owner, now, now + lease())
            self._touched = time.monotonic()

    # -- the state machine --------------------------------------------------------------------

    def drive(self) -> None:
        info = self._current_order()
        while True:
            if info.status == AcmeStatus.PENDING:
                info = self._validate(info)
            elif info.status == AcmeStatus.READY:
                info = self._finalize(info)
            elif info.status == AcmeStatus.PROCESSING:
                info = self._poll(info, lambda i: i.status != AcmeStatus.PROCESSING)
            elif info.status == AcmeStatus.VALID and info.certificate:
                self._download(info)
                return
            elif info.status == AcmeStatus.INVALID:
                problem = self._authz_problem(info) or info.error
                why = str(problem) if problem else "no reason given"
                raise PermanentError(f"the CA marked the order invalid: {why}", problem)
            else:
                raise PermanentError(f"the CA reports an unknown order status {info.status!r}")

    def _current_order(self) -> OrderInfo:
        if not self.order.order_url:
            return self._orphan() or self._new_order()
        awaiting = self.order.state is OrderState.AWAITING_DNS
        try:
            info = self.ca.get_order(self.order.order_url)
        except PermanentError as exc:
            if awaiting:
                raise AwaitingDns.expired(self.cert.id, str(exc)) from None
            # The CA forgot the order (expired, or the CA was reset): start a new one.
            self.progress(f"the CA no longer has order {self.order.order_url} ({exc})")
            return self._new_order()
        self.progress(f"resuming order {info.url} ({info.status})")
        if awaiting and info.status == AcmeStatus.INVALID:
            raise AwaitingDns.expired(self.cert.id, f"the CA marked it {info.status}")
        interrupted = self.order.state in (OrderState.PRESENTED, OrderState.ANSWERED)
        if info.status == AcmeStatus.INVALID and interrupted:
            # Validation ran while the process that answered it was gone (killed, or
            # its responder with it). That says nothing about the names: order again,
            # within the same attempt budget as any transient failure.
            attempts = self.order.attempts + 1
            problem = self._authz_problem(info) or info.error
            if attempts >= self.run.retry_attempts:
                raise PermanentError(
                    f"the CA marked the order invalid: {problem or 'no reason given'} "
                    f"(validation ran while this order's process was gone; gave up after "
                    f"{attempts} attempts)",
                    problem,
                )
            now = self.run.clock()
            self.repo.count_failed_attempt(
                self.order.id,
                self.owner,
                now,
                now + lease(),
                attempts=attempts,
                message=f"the interrupted order failed validation: {problem}",
                problem=problem,
            )
            self.progress(f"the interrupted order failed validation ({problem}); ordering again")
            return self._new_order()
        return info

    def _orphan(self) -> OrderInfo | None:
        """An order its previous holder created at the CA and died before recording: the
        newest of the account's orders (as the CA lists them) that no order here names,
        for exactly these names and still usable. Looked for only when this order was
        taken from a holder that never let it go (an order let go after a failure, a
        hold or a wait has none to find): asking costs requests, and step-ca answers it
        by forgetting the account's orders when none is pending, after which it refuses
        the account's every new order. Best effort: a CA whose list is missing (Let's
        Encrypt names none) or unreadable is ordered from as usual."""
        if not self.order.taken_over:
            return None
        try:
            urls = self.ca.account_orders()[-ORPHAN_LOOK_BACK:]
        except CAError as exc:  # a CA whose list is missing or broken: order as usual
            log.debug("order %d: the account's orders could not be listed: %s", self.order.id, exc)
            return None
        known = self.repo.known_order_urls(urls)
        for url in reversed(urls):
            if url in known:
                continue
            try:
                info = self.ca.get_order(url)
            except CAError as exc:
                log.debug(
                    "order %d: the CA's order %s could not be read: %s", self.order.id, url, exc
                )
                continue
            usable = info.status in (AcmeStatus.PENDING, AcmeStatus.READY,
                                     AcmeStatus.PROCESSING, AcmeStatus.VALID)  # fmt: skip
            if usable and sorted(info.identifiers) == sorted(self.cert.names):
                now = self.run.clock()
                self.repo.mark_ordered(
                    self.order.id, self.owner, now, now + lease(), order_url=url, replaces=None
                )
                self._touched = time.monotonic()
                self.progress(f"order {url} was created before its process died: resuming it")
                return info
        return None

    def _new_order(self) -> OrderInfo:
        wait = self.run.budgets.spend(self.account, self.cert, self.order)
        if wait is not None:
            raise HeldBack(wait.until, wait.message)
        self.progress(f"ordering {', '.join(self.cert.names)}")
        replaces = self.run.planner.replaces(self.ca, self.cert, self.order)
        info = self.ca.new_order(self.cert.names, replaces=replaces, profile=self.cert.profile)
        fault("order-created")  # at the CA, not yet here: `_orphan` finds it again
        now = self.run.clock()
        self.repo.mark_ordered(
            self.order.id, self.owner, now, now + lease(), order_url=info.url, replaces=replaces
        )
        self._touched = time.monotonic()
        fault(OrderState.ORDERED.value)
        self.progress(f"order {info.url} created")
        return info

    def _validate(self, info: OrderInfo) -> OrderInfo:
        authzs = [self.ca.get_authorization(url) for url in info.authorizations]
        pending = [a for a in authzs if a.status == AcmeStatus.PENDING]
        kind = self.cert.challenge
        challenges: list[PendingChallenge] = []
        to_answer = []
        for authz in pending:
            chall = authz.challenge(kind)
            if chall is None:
                offered = ", ".join(c.type for c in authz.challenges) or "none"
                raise PermanentError(
                    f"the CA offers no {kind.acme_type} challenge for {authz.identifier} "
                    f"(offered: {offered})"
                )
            key_auth = self.ca.key_authorization(chall.token)
            challenges.append(PendingChallenge(authz.identifier, chall.token, key_auth))
            if chall.status == AcmeStatus.PENDING:
                to_answer.append((authz, chall))
        # Present every challenge, and wait until the CA can see each, before answering any.
        job = ChallengeJob(
            self.cert, self.order, self.owner, self.progress, self._keep_lease, self.confirmed
        )
        if challenges:
            self.solver.present(job, challenges)
            self.solver.wait_ready(job, challenges)
        self._step(self.repo.mark_presented, OrderState.PRESENTED)
        for authz in authzs:
            if authz.status == AcmeStatus.VALID:
                self.progress(f"{authz.identifier}: already authorized")
            elif authz.status == AcmeStatus.PENDING:
                self.progress(f"{authz.identifier}: {kind} challenge presented")
        self._check_validation_cap([authz.identifier for authz, _ in to_answer])
        for _, chall in to_answer:
            self.ca.answer_challenge(chall.url)
        self._step(self.repo.mark_answered, OrderState.ANSWERED)
        for authz, _ in to_answer:
            self.progress(f"{authz.identifier}: challenge answered, the CA is validating")
        info = self._poll(info, lambda i: i.status != AcmeStatus.PENDING)
        if info.status in (AcmeStatus.READY, AcmeStatus.PROCESSING, AcmeStatus.VALID):
            for authz in pending:
                self.progress(f"{authz.identifier}: validated")
        return info

    def _check_validation_cap(self, names: Sequence[str]) -> None:
        """Answer no challenge for a name that failed validation too often this hour."""
        if not names:
            return
        now = self.run.clock()
        cap = self.run.validation_cap
        failures = self.repo.validation_failures_since(
            self.account.id, list(names), now - VALIDATION_WINDOW
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
        if self.order.purpose is OrderPurpose.RENEW and self.cert.key_policy is KeyPolicy.NEW:
            sealed = self.repo.order_key_sealed(self.order.id)
            if sealed is None:
                key = generate_private_key(KeyType(self.cert.key_type))
                sealed = self.run.sealer.seal(private_key_to_pem(key))
                self.repo.set_order_key(self.order.id, self.owner, sealed, self.run.clock())
                self._private_key = key
                return key
        if sealed is None:
            sealed = self.repo.certificate_key_sealed(self.cert.id)
        if sealed is None:
            raise PermanentError(f"certificate {self.cert.id} has no private key stored")
        self._private_key = load_private_key(self.run.sealer.unseal(sealed))
        return self._private_key

    @property
    def _device_csr(self) -> str | None:
        """A device's own CSR, as it signed it: its fresh one while it renews."""
        return self.cert.next_csr_pem or self.cert.csr_pem

    def _finalize(self, info: OrderInfo) -> OrderInfo:
        if self._device_csr is not None:
            csr = self._device_csr.encode()
        else:
            csr = make_csr(self._key(), self.cert.names, Subject(**self.cert.subject))
        self._step(self.repo.mark_finalizing, OrderState.FINALIZING)
        self.progress("finalizing: CSR sent")
        return self.ca.finalize(info, csr)

    def _download(self, info: OrderInfo) -> None:
        assert info.certificate is not None
        fullchain = self.ca.download_certificate(info.certificate)
        fault("downloaded")
        cert_pem, chain_pem = split_chain(fullchain)
        leaf = x509.load_pem_x509_certificate(cert_pem.encode())
        key_type = None
        if self._device_csr is not None:
            if not _same_public_key(leaf, self._device_csr):
                raise PermanentError("the certificate the CA sent does not match the device's CSR")
            key_type = read_device_csr(self._device_csr).key_type
        elif not key_matches_certificate(self._key(), leaf):
            raise PermanentError("the certificate the CA sent does not match the stored key")
        issued = describe(cert_pem, chain_pem, info.url)
        now = self.run.clock()
        planner = self.run.planner
        window, next_check = planner.ask_window(self.ca, leaf, now)
        plan = planner.plan(self.cert, self.order, issued.not_before, issued.not_after, window, now)
        self.repo.store_issued(
            self.cert.id, self.order.id, self.owner, issued, now, plan, next_check, key_type
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
                    f"the CA left the order {info.status} for {self.run.order_timeout:.0f} s"
                )
            pause = min(max(delay, info.retry_after or 0.0), remaining)
            self.run.sleep(pause)
            delay = min(delay * 1.5, 2.0)
            self._keep_lease()  # while the CA works
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


def _same_public_key(leaf: x509.Certificate, csr_pem: str) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def spki(key: object) -> bytes:
        return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined, no-any-return]

    csr = x509.load_pem_x509_csr(csr_pem.encode())
    return spki(leaf.public_key()) == spki(csr.public_key())
