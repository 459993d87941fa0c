"""The audit log: who did what, when, from which address, to which object.

Pure: the record, who acts, and the rules that keep secrets out of a record (a key, a
password, a token, a TSIG secret never reaches the log; "(secret)" stands in its place).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

SECRET = "(secret)"  # noqa: S105 - what a record shows instead of a secret value


class ActorKind(StrEnum):
    USER = "user"  # a console session (or a user's own credentials)
    TOKEN = "token"  # an API token  # noqa: S105 - a kind of actor, not a secret
    CLIENT = "client"  # a device, gateway or agent with its client token
    CLI = "cli"  # the command line on the broker's machine, named after the OS user
    SYSTEM = "system"  # the broker itself: workers, the scheduler
    ANONYMOUS = "anonymous"  # a request without valid credentials (refused)


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    name: str
    address: str


SYSTEM = Actor(ActorKind.SYSTEM, "certbroker", "local")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor_kind: ActorKind
    actor: str
    address: str | None
    action: str  # <object>.<verb>: certificate.export-key, user.add, access.refused
    object_type: str | None
    object_id: str | None
    outcome: Outcome
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor_kind": self.actor_kind.value,
            "actor": self.actor,
            "address": self.address,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "outcome": self.outcome.value,
            "details": self.details,
        }


@dataclass(frozen=True)
class AuditQuery:
    since: datetime | None = None
    actor: str | None = None  # the actor's name, exactly
    action: str | None = None  # a prefix: "certificate." or "certificate.export-key"
    outcome: Outcome | None = None
    before_id: int | None = None  # keyset: entries older than this one


# Field names whose values are secrets, whatever else they are called: a private key,
# a password, a token, a TSIG secret, an SMTP password, a webhook secret, an SSH identity.
_SECRET_FIELD = re.compile(
    r"(password|passphrase|secret|token|private|identity|credential|api_?key|"
    r"^key$|_key$|^key_pem$|key_sealed|sealed|auth_?(key|token)|hmac)",
    re.IGNORECASE,
)
# Fields that name a secret's kind or identity, not its value.
_NOT_SECRET = frozenset(
    {
        "key_type",
        "key_policy",
        "tsig_key_name",
        "tsig_algorithm",
        "token_id",
        "token_name",
        "token_prefix",
        "prefix",
        "eab_kid",
        "keystore_type",
        "keystore_password_kept",
        "password_changed",
        "public_key",
    }
)


def is_secret_field(name: str) -> bool:
    return name.lower() not in _NOT_SECRET and bool(_SECRET_FIELD.search(name))


def _looks_secret(value: str) -> bool:
    """A value that is a secret whatever its field: PEM private keys, our tokens (not
    their prefixes, `cbt_` and 6 characters, which lists show to tell tokens apart)."""
    return "PRIVATE KEY-----" in value or (value.startswith(("cbt_", "cbc_")) and len(value) > 20)


def redact(value: Any, secrets: frozenset[str] = frozenset()) -> Any:
    """`value` (JSON-like) with every secret replaced by "(secret)": values of fields
    that name a secret, values that look like one, and the values in `secrets`."""
    if isinstance(value, Mapping):
        return {
            str(k): (
                SECRET if v not in (None, "") and is_secret_field(str(k)) else redact(v, secrets)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, secrets) for v in value]
    if isinstance(value, bytes):
        return SECRET
    if isinstance(value, str):
        if _looks_secret(value):
            return SECRET
        for secret in secrets:  # also where one is part of a longer text (a URL, a line)
            if len(secret) >= 4 and secret in value:
                value = value.replace(secret, SECRET)
        return value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return redact(str(value), secrets)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`{field: [old, new]}` for each field that changed (secrets redacted after)."""
    fields = dict.fromkeys([*old, *new])
    return {k: [old.get(k), new.get(k)] for k in fields if old.get(k) != new.get(k)}
