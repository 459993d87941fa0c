"""Who may do what: roles, users, API tokens, and the names a token is limited to.

Pure: no store, no hashing. The rules here are the whole of access control; the API,
the console and the CLI ask `Principal.may` and `Principal.may_see` and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from certbroker.domain.errors import AccessDenied, NotFoundError, UsageError


class Role(StrEnum):
    """viewer < operator < admin: each may do everything the one before may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UsageError(f"unknown role {text!r}: choose viewer, operator or admin") from None

    @property
    def rank(self) -> int:
        return {"viewer": 0, "operator": 1, "admin": 2}[self.value]


class Action(StrEnum):
    """What a caller asks to do, and the least role that may."""

    READ = "read"  # certificates, accounts, DNS accounts, events, alarms, settings
    READ_KEY = "read-key"  # an export holding a private key
    REQUEST = "request"  # request, renew, resume, verify, disable/enable
    REVOKE = "revoke"
    DELETE = "delete"
    MANAGE = "manage"  # ACME and DNS accounts, users, tokens, settings

    @property
    def least_role(self) -> Role:
        if self is Action.READ:
            return Role.VIEWER
        if self is Action.MANAGE:
            return Role.ADMIN
        return Role.OPERATOR


# A user name: what people type at the login form and `certbroker user` takes.
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD = 10


def check_user_name(name: str) -> str:
    if not _USER_NAME.match(name):
        raise UsageError(
            f"user name {name!r} is not valid: 1 to 100 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UsageError("the password is too long: at most 1024 characters")
    return password


# -- names a token is limited to ------------------------------------------------------------

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_PATTERN = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


def parse_name_patterns(patterns: Iterable[str]) -> list[str]:
    """`--names` values: exact DNS names, or `*.zone` for every name below the zone."""
    found: list[str] = []
    for raw in patterns:
        pattern = raw.strip().lower().rstrip(".")
        if not _PATTERN.match(pattern):
            raise UsageError(
                f"name pattern {raw!r} is neither a DNS name nor '*.zone' (e.g. "
                "'www.example.com' or '*.example.com')"
            )
        if pattern not in found:
            found.append(pattern)
    return found


def name_matches(pattern: str, name: str) -> bool:
    """`*.zone` matches every name below the zone (wildcards included), not the zone."""
    name = name.lower().rstrip(".")
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def names_allowed(patterns: Sequence[str], names: Iterable[str]) -> bool:
    """True when every name matches one of `patterns` (no patterns: no limit)."""
    if not patterns:
        return True
    return all(any(name_matches(p, n) for p in patterns) for n in names)


# -- who is asking --------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    enabled: bool
    created_at: datetime
    password_changed_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
            "password_changed_at": self.password_changed_at.isoformat(),
        }


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    role: Role
    names: tuple[str, ...]  # the patterns it is limited to; () for none
    prefix: str  # the first characters, to recognise it in a list or a leak
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    last_used_from: str | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "names": list(self.names),
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
            "last_used_from": self.last_used_from,
        }


def token_role(role: Role, names: Sequence[str]) -> Role:
    """What a token acts as. Admin work (users, tokens, clients, targets, settings) has no
    names to limit it by, so no admin is name-limited: a token made so before
    this rule acts as an operator within its names."""
    return Role.OPERATOR if role is Role.ADMIN and names else role


def broader_than(maker: Principal, role: Role, names: Sequence[str]) -> str | None:
    """Why a token of `role` limited to `names` (none: unlimited) would be broader than
    the caller making it; None when it is not."""
    if role.rank > maker.role.rank:
        return (
            f"the role {role.value} is broader than {maker.kind} {maker.name!r}'s "
            f"({maker.role.value})"
        )
    if maker.names and (not names or not all(names_allowed(maker.names, [n]) for n in names)):
        shown = ", ".join(names) or "every name"
        return (
            f"{shown} is broader than the names {maker.kind} {maker.name!r} is limited to "
            f"({', '.join(maker.names)})"
        )
    return None


@dataclass(frozen=True)
class Principal:
    """The caller of one request: a user (console, or the CLI on the machine) or a token."""

    name: str
    role: Role
    names: tuple[str, ...] = field(default=())  # a token's name limit
    user_id: int | None = None
    token_id: int | None = None

    @property
    def kind(self) -> str:
        return "token" if self.token_id is not None else "user"

    def may(self, action: Action) -> bool:
        return self.role.rank >= action.least_role.rank

    def may_see(self, names: Iterable[str]) -> bool:
        return names_allowed(self.names, names)

    @property
    def key(self) -> str:
        """Who owns an Idempotency-Key: keys of different callers never meet."""
        return f"token:{self.token_id}" if self.token_id is not None else f"user:{self.user_id}"


_WHAT = {
    Action.READ: "read this",
    Action.READ_KEY: "receive private keys",
    Action.REQUEST: "request or renew certificates",
    Action.REVOKE: "revoke certificates",
    Action.DELETE: "delete certificates",
    Action.MANAGE: "manage accounts, users, tokens or settings",
}


def require(principal: Principal, action: Action) -> None:
    """AccessDenied unless the principal's role may `action`."""
    if not principal.may(action):
        raise AccessDenied(
            f"{principal.kind} {principal.name!r} ({principal.role.value}) may not "
            f"{_WHAT[action]}; that needs the role {action.least_role.value}"
        )


def require_visible(principal: Principal, names: Iterable[str], cert_id: int) -> None:
    """A name-limited caller sees only its own certificates: another one does not exist
    for it (NotFoundError, the words of a certificate that is not there)."""
    if principal.names and not principal.may_see(names):
        raise NotFoundError(f"no certificate with ID {cert_id}; see `certbroker cert list`")
