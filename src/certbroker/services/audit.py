"""The audit log: who did what, when, from which address (docs/operations.md, "Audit log").

Who is acting lives in a context variable holding one mutable `Acting` per request (the
API's and console's middleware sets a fresh one with the caller's address; the
authentication fills in the principal) or per CLI process (`cli`, named after the OS
user). FastAPI runs a plain dependency in a worker thread with a *copy* of the context:
the copy still points at the same `Acting`, so what the dependency writes into it the
endpoint sees. Threads of their own (workers, the scheduler) start with an empty context
and act as `system`.

Services call `record` where a change has been made (after it succeeded), or, for a
private key, before the key is handed out: a record that cannot be written stops the
export. Details go through `domain.audit.redact`, so no secret reaches the store.
"""

from __future__ import annotations

import base64
import getpass
import os
import threading
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from certbroker.domain.audit import (
    SYSTEM,
    Actor,
    ActorKind,
    AuditEntry,
    AuditQuery,
    Outcome,
    redact,
)
from certbroker.domain.audit import diff as diff  # for the services: audit.diff(old, new)
from certbroker.domain.errors import UsageError
from certbroker.services.common import ServiceContext

PAGE_LIMIT = 500  # the most records one page of the API or the console holds
REFUSED = "access.refused"


@dataclass
class Acting:
    """Who acts in this request (or CLI process): the address is known from the start,
    the actor once the credentials were checked."""

    address: str
    actor: Actor | None = None


_acting: ContextVar[Acting | None] = ContextVar("certbroker_acting", default=None)


def begin_request(address: str) -> Token[Acting | None]:
    """A fresh holder for one request from `address` (the middleware's; `end_request`
    with the token it returns)."""
    return _acting.set(Acting(address=address))


def end_request(token: Token[Acting | None]) -> None:
    _acting.reset(token)


def act_as(kind: ActorKind, name: str) -> None:
    """The principal of the current request, once authenticated. Outside a request (a
    service called directly) there is nothing to name: the broker acts there."""
    holder = _acting.get()
    if holder is not None:
        holder.actor = Actor(kind, name, holder.address)


def act_as_cli() -> None:
    """This process is the command line on the broker's machine: `cli`, named after the
    operating system's user."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (a container's arbitrary UID)
        name = f"uid {os.getuid()}"
    _acting.set(Acting(address="local", actor=Actor(ActorKind.CLI, name, "local")))


def current_actor() -> Actor:
    """Who acts now: the request's principal; `anonymous` in a request before (or
    without) valid credentials; `system` outside any request or command."""
    holder = _acting.get()
    if holder is None:
        return SYSTEM
    if holder.actor is not None:
        return holder.actor
    return Actor(ActorKind.ANONYMOUS, "(not authenticated)", holder.address)


def by_system() -> bool:
    """Whether the broker itself acts now (a worker, the scheduler), not a person."""
    return current_actor().kind is ActorKind.SYSTEM


def record(
    ctx: ServiceContext,
    action: str,
    object_type: str | None = None,
    object_id: object = None,
    details: Mapping[str, Any] | None = None,
    *,
    outcome: Outcome = Outcome.OK,
    secrets: Iterable[str] = (),
    actor: Actor | None = None,
) -> None:
    """Append a record of `action` by whoever acts now (or `actor`); `details` (a diff
    `{field: [old, new]}` or the parameters) with every secret replaced by "(secret)",
    and the values in `secrets` wherever they appear."""
    cleaned = redact(dict(details or {}), frozenset(s for s in secrets if s))
    ctx.repo.add_audit(
        at=ctx.clock(),
        actor=actor or current_actor(),
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        outcome=outcome,
        details=cleaned,
    )


def _encode(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{entry_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, number = raw.partition(":")
        if kind != "audit":
            raise ValueError(raw)
        return int(number)
    except ValueError:
        raise UsageError("cursor: not one this API gave out; start again without it") from None


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]  # newest first
    next: str | None  # the cursor of the next (older) page; None on the last


REFUSALS_PER_MINUTE = 30


class AuditService:
    """The audit log as entry points see it (`Broker.audit`): record, refuse, read."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # Refusals recorded per (actor, address, status) in the current minute, and those
        # left out beyond REFUSALS_PER_MINUTE: someone hammering the API without
        # credentials cannot make the log (and the store's write lock) theirs.
        self._refusals: dict[tuple[str, str, int], list[int]] = {}
        self._minute = -1
        self._lock = threading.Lock()

    def record(
        self,
        action: str,
        object_type: str | None = None,
        object_id: object = None,
        details: Mapping[str, Any] | None = None,
        *,
        outcome: Outcome = Outcome.OK,
        secrets: Iterable[str] = (),
    ) -> None:
        record(self.ctx, action, object_type, object_id, details, outcome=outcome, secrets=secrets)

    def refused(self, method: str, path: str, reason: str, status: int) -> None:
        """A request the API or the console refused (401/403): who, what, why. At most
        REFUSALS_PER_MINUTE records a minute per caller, address and status in each
        process; the next record after a pause says how many were left out."""
        actor = current_actor()
        key = (f"{actor.kind.value}:{actor.name}", actor.address or "", status)
        minute = int(self.ctx.clock().timestamp() // 60)
        with self._lock:
            if minute != self._minute:
                skipped = {k: v[1] for k, v in self._refusals.items() if v[1]}
                self._refusals = {k: [0, n] for k, n in skipped.items()}
                self._minute = minute
            seen = self._refusals.setdefault(key, [0, 0])
            if seen[0] >= REFUSALS_PER_MINUTE:
                seen[1] += 1
                return
            seen[0] += 1
            left_out, seen[1] = seen[1], 0
        details: dict[str, Any] = {"method": method, "path": path, "status": status,
                                   "reason": reason}  # fmt: skip
        if left_out:
            details["refusals_not_recorded_before"] = left_out
        record(
            self.ctx,
            REFUSED,
            "request",
            f"{method} {path}",
            details,
            outcome=Outcome.REFUSED,
        )

    def entries(
        self,
        since: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """The newest `limit` records matching, oldest first (as `certbroker events`)."""
        if limit < 1:
            raise UsageError("--limit takes a number of records, 1 or more")
        query = AuditQuery(since=since, actor=actor or None, action=action or None)
        return self.ctx.repo.audit_entries(query, limit, newest_first=False)

    def page(
        self,
        since: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """One page, newest first; the next page's cursor names the last record shown,
        so a page deep in the log costs what the first does."""
        if not 1 <= limit <= PAGE_LIMIT:
            raise UsageError(f"limit: from 1 to {PAGE_LIMIT}")
        query = AuditQuery(
            since=since,
            actor=actor or None,
            action=action or None,
            before_id=_decode(cursor) if cursor else None,
        )
        found = self.ctx.repo.audit_entries(query, limit + 1, newest_first=True)
        more = len(found) > limit
        found = found[:limit]
        return AuditPage(found, _encode(found[-1].id) if more and found else None)
