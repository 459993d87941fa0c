"""The small interfaces services depend on. Adapters implement them; tests use real ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from certbroker.domain.errors import AcmeProblem
from certbroker.domain.models import Certificate, ChallengeType, Order

if TYPE_CHECKING:
    from email.message import EmailMessage

    from certbroker.domain.notify import MailConfig
    from certbroker.domain.targets import FileSpec, InstallResult, Target

Progress = Callable[[str], None]  # one line for the person waiting (cert request --wait)


@dataclass(frozen=True)
class ChallengeInfo:
    type: str
    url: str
    token: str
    status: str
    error: AcmeProblem | None = None


@dataclass(frozen=True)
class AuthorizationInfo:
    url: str
    identifier: str
    wildcard: bool
    status: str
    challenges: tuple[ChallengeInfo, ...]
    retry_after: float | None = None

    def challenge(self, kind: ChallengeType) -> ChallengeInfo | None:
        return next((c for c in self.challenges if c.type == kind.acme_type), None)

    @property
    def problem(self) -> AcmeProblem | None:
        for ch in self.challenges:
            if ch.error is not None:
                return AcmeProblem(
                    type=ch.error.type,
                    detail=ch.error.detail,
                    status=ch.error.status,
                    identifier=self.identifier,
                    subproblems=ch.error.subproblems,
                )
        return None


@dataclass(frozen=True)
class OrderInfo:
    url: str
    status: str
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    error: AcmeProblem | None = None
    retry_after: float | None = None
    identifiers: tuple[str, ...] = ()  # the names it is for


@dataclass(frozen=True)
class RenewalInfo:
    """The CA's suggested renewal window for one certificate (RFC 9773)."""

    start: datetime
    end: datetime
    retry_after: float | None = None  # seconds until it should be asked again
    explanation_url: str | None = None


@dataclass(frozen=True)
class AccountInfo:
    uri: str
    status: str
    contacts: tuple[str, ...] = field(default_factory=tuple)
    terms_of_service: str | None = None


class CertificateAuthority(Protocol):
    """ACME for one account.

    Retries badNonce itself; raises TransientError (worth retrying) or PermanentError;
    never sleeps except to honour the CA's own Retry-After between badNonce retries.
    """

    def terms_of_service(self) -> str | None: ...
    def external_account_required(self) -> bool: ...
    def register(
        self, emails: Sequence[str], agree_tos: bool, eab: tuple[str, str] | None
    ) -> AccountInfo: ...
    def find_account(self) -> AccountInfo: ...
    def query_account(self) -> AccountInfo: ...
    def update_contacts(self, emails: Sequence[str]) -> AccountInfo: ...
    def deactivate(self) -> AccountInfo: ...
    def change_key(self, new_key_pem: bytes) -> None: ...
    def new_order(
        self, names: Sequence[str], replaces: str | None = None, profile: str | None = None
    ) -> OrderInfo: ...
    def profiles(self) -> dict[str, str]: ...
    def supports_renewal_info(self) -> bool: ...
    def renewal_info(self, cert_id: str) -> RenewalInfo: ...
    def get_order(self, url: str) -> OrderInfo: ...
    def account_orders(self) -> list[str]:
        """The URLs of this account's orders, as the CA lists them (RFC 8555 7.1.2.1),
        oldest first; [] from a CA that lists none."""
        ...

    def get_authorization(self, url: str) -> AuthorizationInfo: ...
    def key_authorization(self, token: str) -> str: ...
    def answer_challenge(self, url: str) -> None: ...
    def finalize(self, order: OrderInfo, csr_pem: bytes) -> OrderInfo: ...
    def download_certificate(self, url: str) -> str: ...
    def revoke(self, cert_pem: bytes, reason: int) -> None: ...


class DnsProvider(Protocol):
    """Writes and removes the TXT records of DNS-01 challenges through one DNS account.

    Names are absolute, without the trailing dot ("_acme-challenge.www.example.com");
    values are the TXT strings themselves, without quotes. Raises PermanentError when the
    provider rejects the request (a wrong credential, a zone it does not serve) and
    TransientError when it cannot be reached; the message names the account's server or
    provider and what to check.
    """

    def add_txt(self, name: str, value: str) -> None:
        """Add `value` to the TXT records at `name`; other values there stay."""
        ...

    def remove_txt(self, name: str, value: str) -> None:
        """Remove exactly `value` from the TXT records at `name`; absent is not an error."""
        ...

    def check_servers(self) -> tuple[tuple[str, int], ...]:
        """Servers (IP, port) the propagation check asks by default; () to find the
        zone's authoritative servers by walking the delegation."""
        ...


class DnsLookups(Protocol):
    """DNS questions for DNS-01 (certbroker.dns.propagation.DnsLookups)."""

    def cname_target(self, name: str) -> str:
        """The end of the CNAME chain at `name`, or `name` itself."""
        ...

    def authoritative_servers(self, name: str) -> tuple[tuple[str, int], ...]:
        """The addresses of the authoritative servers of the zone `name` is in."""
        ...

    def wait_visible(
        self,
        checks: Sequence[tuple[tuple[str, int], str, str]],
        timeout: float,
        between: Callable[[], None] = ...,
    ) -> float:
        """Until each (server, name, value) is visible; seconds taken. TransientError
        naming a lagging server after `timeout`. `between` runs before each pause."""
        ...


class RunningResponder(Protocol):
    """An HTTP-01 responder this process started (challenges/http01.py)."""

    @property
    def port(self) -> int: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class PendingChallenge:
    """One challenge of an order to present: the name it proves (`*.example.com` for a
    wildcard), the CA's token and the key authorization that answers it."""

    identifier: str
    token: str
    key_authorization: str


@dataclass(frozen=True)
class ChallengeJob:
    """The order a solver presents challenges for, and what it may call back."""

    certificate: Certificate
    order: Order
    owner: str  # the lease holder; every write of the solver's is under this lease
    progress: Progress
    keep_lease: Callable[[], None]  # call while waiting, so the lease never runs out
    confirmed: bool = False  # a person says the records are in place (`cert verify`)


@dataclass(frozen=True)
class SolverChoice:
    """What a solver stores with a certificate it accepted (dns-01: which DNS account)."""

    dns_account_id: int | None = None
    dns_manual: bool = False


class ChallengeSolver(Protocol):
    """Proves control of names for one challenge type (http-01, dns-01; the gateway
    agent is a third way). The services call only this; wiring.py picks the solvers.

    Contract:
    * `present` is given every pending challenge of an order at once and puts them all
      where the CA will look before it returns; no challenge is answered before
      `present` and `wait_ready` returned for all of them.
    * `wait_ready` returns once every challenge is visible where the CA will look
      (DNS propagation); it raises TransientError naming what lags after its timeout,
      and calls `job.keep_lease` while it waits.
    * Either may raise AwaitingDns: a person must act before the order can go on.
    * `cleanup(order_id)` removes what was presented for that order, is safe to call
      any number of times, and works when `present` failed half-way. `sweep` removes
      what orders that ended without their process (a crash) left behind.
    * What they store is in the store, never only in a process: any process or node on
      the store can answer, resume or clean up.
    """

    type: ChallengeType

    def check_request(self, names: Sequence[str], dns_account: str | None) -> SolverChoice:
        """Refuse (UsageError) a request this solver cannot serve, before anything is
        stored; what it returns is kept with the certificate."""
        ...

    def describe(self, cert: Certificate) -> Mapping[str, Any]:
        """What `cert show` says of how this certificate's names are proven."""
        ...

    def answering(self, progress: Progress) -> AbstractContextManager[None]:
        """For the duration, make sure something answers the CA for this store (the
        HTTP-01 responder, unless `serve` already does)."""
        ...

    def present(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None: ...

    def wait_ready(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None: ...

    def cleanup(self, order_id: int) -> None: ...

    def sweep(self) -> int:
        """Clean up after every order that ended; how many things were removed."""
        ...


@dataclass(frozen=True)
class DeploySecrets:
    """What a push target needs that is kept sealed (or, known_hosts, in clear)."""

    identity_pem: bytes | None = None  # the SSH identity's private key
    known_hosts: str | None = None  # known_hosts lines; every host must be in them


class Mailer(Protocol):
    """Sends one mail (notify/smtp.py)."""

    def send(self, config: MailConfig, message: EmailMessage) -> str:
        """The server's answer to the mail ("250 2.0.0 Ok: queued as …"). UsageError
        for what a person must fix, TransientError for what may pass."""
        ...


class RequestTimer(Protocol):
    """Told how long each request to a CA took (the ACME request-duration histogram)."""

    def observe(self, host: str, method: str, status: str, seconds: float) -> None: ...


class Deployer(Protocol):
    """Puts a certificate's files onto one kind of push target (deploy/local.py,
    deploy/ssh.py) and runs its reload command; on a failed reload the old files are put
    back and reloaded. Raises InstallFailed (deploy/files.py) when the files or the
    reload failed, and DeployFailed (domain/targets.py) when a host cannot be reached or
    is not the one its known_hosts names."""

    def check(self, target: Target, secrets: DeploySecrets) -> None:
        """Refuse (UsageError) a target that can never work, before it is stored: an
        identity that cannot be read, a host missing from known_hosts."""
        ...

    def deploy(
        self, target: Target, files: Sequence[FileSpec], secrets: DeploySecrets
    ) -> InstallResult: ...


@dataclass(frozen=True)
class WebhookAnswer:
    """How one webhook POST went: the receiver's status and the start of its answer, or
    why nothing was sent or answered (a refused address, a timeout, a refused connection)."""

    status: int | None = None
    body_head: str = ""  # the first bytes of the answer (300, decoded leniently)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookSender(Protocol):
    """POSTs signed webhook messages (notify/webhook.py), refusing receivers at private,
    loopback, link-local and other non-public addresses unless the webhook allows them
    (server-side request forgery)."""

    def check(self, url: str, allow_private: bool) -> None:
        """Refuse (UsageError, naming the address and `--allow-private`) a URL whose host
        is or resolves to an address that is not public, unless `allow_private`."""
        ...

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], allow_private: bool
    ) -> WebhookAnswer:
        """One POST, the address checked again first (DNS can change), redirects not
        followed; never raises for what the network or the receiver did."""
        ...
