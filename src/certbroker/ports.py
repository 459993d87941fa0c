"""The small interfaces services depend on. Adapters implement them; tests use real ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from certbroker.domain.errors import AcmeProblem


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

    def challenge(self, kind: str) -> ChallengeInfo | None:
        return next((c for c in self.challenges if c.type == kind), None)

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
