"""The error taxonomy.

Every error a user can see says what was wrong and what to do. The CLI maps
`UsageError` to exit code 2 and everything else to exit code 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class CertbrokerError(Exception):
    """Base of every error certbroker raises on purpose."""

    exit_code = 1


class UsageError(CertbrokerError):
    """The user asked for something invalid (bad name, key, file, option). Nothing was stored."""

    exit_code = 2


class NotFoundError(UsageError):
    """A named account, certificate or order does not exist here."""


class ConfigError(UsageError):
    """The configuration file, environment or flags are wrong."""


class NotAuthenticated(UsageError):
    """No credentials, or ones that are wrong, expired or revoked (HTTP 401)."""


class AccessDenied(UsageError):
    """The caller is known but may not do this (HTTP 403)."""


class Conflict(UsageError):
    """The request clashes with the state of things (HTTP 409): a key reused, a run in
    progress."""


class Throttled(UsageError):
    """Too many attempts; try again after `retry_after` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(CertbrokerError):
    """The database cannot be reached: refused, gone mid-statement, starting up or
    shutting down. Nothing about the request is wrong; the same call works once the
    database answers again (`serve` waits; a command exits 1 with this one line)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the database at {where} ({reason}); check that it runs there "
            "and that database_url (CERTBROKER_DATABASE_URL) names it"
        )
        self.where = where  # host:port, never the URL (it may hold a password)
        self.reason = reason  # the driver's, in one line


@dataclass(frozen=True)
class AcmeProblem:
    """An RFC 8555 / RFC 7807 problem document as the CA sent it."""

    type: str
    detail: str = ""
    status: int | None = None
    identifier: str | None = None
    subproblems: tuple[AcmeProblem, ...] = field(default_factory=tuple)

    @property
    def code(self) -> str:
        """The short ACME error code: 'badNonce' for 'urn:ietf:params:acme:error:badNonce'."""
        prefix = "urn:ietf:params:acme:error:"
        return self.type[len(prefix) :] if self.type.startswith(prefix) else self.type

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "detail": self.detail}
        if self.status is not None:
            data["status"] = self.status
        if self.identifier:
            data["identifier"] = self.identifier
        if self.subproblems:
            data["subproblems"] = [p.to_json() for p in self.subproblems]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AcmeProblem:
        """A problem document as a CA sent it, whatever its fields hold (it is only ever
        shown to a person): a field of the wrong type is left out, never an error."""
        ident = data.get("identifier")
        if isinstance(ident, dict):
            ident = ident.get("value")
        status = data.get("status")
        subs = data.get("subproblems")
        return cls(
            type=str(data.get("type") or "about:blank"),
            detail=str(data.get("detail") or ""),
            status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            identifier=str(ident) if ident else None,
            subproblems=tuple(cls.from_json(p) for p in subs if isinstance(p, dict))
            if isinstance(subs, list)
            else (),
        )

    def __str__(self) -> str:
        text = f"{self.code}: {self.detail}" if self.detail else self.code
        if self.identifier:
            text = f"{self.identifier}: {text}"
        for sub in self.subproblems:
            text += f"; {sub}"
        return text


class CAError(CertbrokerError):
    """The CA (or the network to it) failed. Carries the CA's problem when it sent one."""

    def __init__(self, message: str, problem: AcmeProblem | None = None) -> None:
        super().__init__(message)
        self.problem = problem


class TransientError(CAError):
    """Worth retrying later: network trouble, 5xx, badNonce, rateLimited."""

    def __init__(
        self, message: str, problem: AcmeProblem | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, problem)
        self.retry_after = retry_after


class PermanentError(CAError):
    """Retrying will not help until a person changes something."""


# ACME error codes worth retrying (the CA adapter raises TransientError for them).
TRANSIENT_CODES = frozenset({"badNonce", "rateLimited", "serverInternal"})


class LeaseLost(Exception):
    """Another worker holds this order now; the current holder must stop touching it."""


class AwaitingDns(Exception):
    """Manual DNS-01: the order stops until a person writes the records (`cert verify`)."""

    def __init__(self, message: str, *, first: bool, order_gone: bool = False) -> None:
        super().__init__(message)
        self.first = first  # the records were just shown; False: still not there
        self.order_gone = order_gone  # the CA's order is gone: `cert verify --new-challenge`

    @classmethod
    def expired(cls, cert_id: int, why: str) -> AwaitingDns:
        """The CA's order behind the records a person was shown can no longer be used."""
        return cls(
            f"the CA's order for these TXT records is no longer usable ({why}); run "
            f"`certbroker cert verify {cert_id} --new-challenge` for new values",
            first=False,
            order_gone=True,
        )


class StoreFull(StoreUnavailable):
    """The store refused a write for lack of space: the disk holding SQLite's file, or
    PostgreSQL's data directory, is full. The write's transaction was rolled back whole,
    so nothing of it is stored and nothing stored before is lost, and the same call works
    once there is room. A kind of StoreUnavailable (the store cannot take the write now),
    so `serve` waits it out as it waits out a database that went away; reads go on.
    `since`: when this process's writes started to be refused (store/space.py)."""

    def __init__(
        self, where: str, reason: str, since: datetime, *, advice: str, doing: str = ""
    ) -> None:
        CertbrokerError.__init__(
            self,
            (f"{doing}: " if doing else "")
            + f"the store {where} is full ({reason}): the write was refused and rolled back, "
            f"nothing stored before is lost; {advice}, and certbroker takes writes again as "
            "soon as there is room",
        )
        self.where = where  # the SQLite file, or PostgreSQL's host:port/database
        self.reason = reason  # the database's words
        self.since = since
        self.advice = advice

    def doing(self, what: str) -> StoreFull:
        """The same refusal, saying first what could not be done because of it."""
        return StoreFull(self.where, self.reason, self.since, advice=self.advice, doing=what)


class NoSpace(CertbrokerError):
    """A file could not be written for lack of space (ENOSPC, or a disk quota): what was
    at its path before is unchanged and no temporary file is left. Exit 1, not 2: nothing
    about the request is wrong, and it works once there is room."""
