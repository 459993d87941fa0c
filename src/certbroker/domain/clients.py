"""Clients: the devices, gateways, load balancers and servers that obtain certificates
from the broker for themselves, each limited to the names on its allow-list.

Pure: what a client may obtain is decided here, and nowhere else."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from certbroker.domain.access import name_matches, parse_name_patterns
from certbroker.domain.errors import UsageError

_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ClientPolicy(StrEnum):
    """What happens to a request for a name off the allow-list."""

    DENY = "deny"  # refused at once
    APPROVE = "approve"  # waits for an admin to approve or deny it

    @classmethod
    def parse(cls, text: str) -> ClientPolicy:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UsageError(f"unknown policy {text!r}: choose deny or approve") from None


class Renewal(StrEnum):
    """Who renews a client's certificates."""

    DEVICE = "device"  # it sends a fresh CSR when due (innovaphone's devices, 30 days ahead)
    BROKER = "broker"  # the broker renews with the CSR on file, as for its own certificates

    @classmethod
    def parse(cls, text: str) -> Renewal:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UsageError(f"unknown renewal {text!r}: choose device or broker") from None


def check_client_name(name: str) -> str:
    if not _CLIENT_NAME.match(name):
        raise UsageError(
            f"client name {name!r} is not valid: 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_allow_list(patterns: Iterable[str], wildcard: bool) -> list[str]:
    """`--allow` values: exact names and `*.zone`; a wildcard certificate needs
    `--wildcard` besides `*.zone` (`*.zone` alone allows the names below the zone)."""
    found = parse_name_patterns(patterns)
    if wildcard and not any(p.startswith("*.") for p in found):
        raise UsageError("--wildcard needs an --allow '*.zone' for the wildcard it allows")
    return found


def off_the_list(allow: Sequence[str], wildcard: bool, names: Iterable[str]) -> list[str]:
    """The names a client with this allow-list may not obtain (empty: all allowed).

    A wildcard name `*.a.zone` is allowed only when `wildcard` is set and `*.a.zone` is
    on the list itself or below an allowed `*.zone`; an ordinary name when it is on the
    list or below an allowed `*.zone`."""
    refused = []
    for raw in names:
        name = raw.lower().rstrip(".")
        if name.startswith("*."):
            ok = wildcard and any(p == name or name_matches(p, name) for p in allow if "*" in p)
        else:
            ok = any(name_matches(p, name) for p in allow)
        if not ok:
            refused.append(name)
    return refused


def connection_refusal(connected: Client, current: Client | None) -> str | None:
    """Why a connection that authenticated as `connected` may no longer act for its client,
    now that the client is `current` (None: deleted); None while it may. Asked at every
    delivery, not only when the connection opened."""
    if current is None:
        return f"client {connected.name!r} was deleted"
    if not current.enabled:
        return f"client {current.name!r} is disabled"
    if current.token_rotated_at != connected.token_rotated_at:
        return f"client {current.name!r} has a new token"
    return None


def delivery_refusal(
    client: Client,
    names: Iterable[str],
    *,
    with_key: bool,
    made_for_a_client: bool,
    approved: Callable[[], Collection[str]] = tuple,
) -> str | None:
    """Why a certificate for `names` (and its key, `with_key`) may not go to `client` as
    it is now; None when it may. A key goes only with a certificate made for clients: an
    operator's own certificates keep their keys where the operator put them. `approved`:
    the names off its list an admin let through for this certificate of this client
    (asked only when some name is off the list)."""
    refused = client.off_the_list(names)
    if refused:
        allowed = approved()
        refused = [name for name in refused if name not in allowed]
    if refused:
        return f"{', '.join(refused)} not on client {client.name!r}'s allow-list"
    if with_key and not made_for_a_client:
        return "its key is an operator's, never sent to an agent"
    return None


@dataclass(frozen=True)
class Client:
    id: int
    name: str
    allow: tuple[str, ...]
    wildcard: bool
    policy: ClientPolicy
    enabled: bool
    token_prefix: str
    created_at: datetime
    token_rotated_at: datetime
    last_seen_at: datetime | None = None
    last_seen_from: str | None = None
    account_id: int | None = None  # the ACME account it orders with; None: the only one
    renewal: Renewal = Renewal.DEVICE
    agent_at: datetime | None = None  # an agent of it last connected (to any node)

    def off_the_list(self, names: Iterable[str]) -> list[str]:
        return off_the_list(self.allow, self.wildcard, names)

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "name": self.name,
            "allow": list(self.allow),
            "wildcard": self.wildcard,
            "policy": self.policy.value,
            "enabled": self.enabled,
            "token_prefix": self.token_prefix,
            "created_at": self.created_at.isoformat(),
            "token_rotated_at": self.token_rotated_at.isoformat(),
            "last_seen_at": iso(self.last_seen_at),
            "last_seen_from": self.last_seen_from,
            "account_id": self.account_id,
            "renewal": self.renewal.value,
            "agent_at": iso(self.agent_at),
        }


@dataclass(frozen=True)
class Renewing:
    """A CSR for names the client has a certificate for: that certificate is renewed.
    `csr_pem` None: the same key, not yet due, so no order (the current one is answered)."""

    certificate_id: int
    csr_pem: str | None
    device_renews: bool


class RequestState(StrEnum):
    """A device's CSR request, before it is a certificate (or instead of one)."""

    AWAITING_APPROVAL = "awaiting-approval"  # names off the list, policy approve
    ACCEPTED = "accepted"  # a certificate is being obtained for it (certificate_id)
    DENIED = "denied"  # final for this request, as in cert-manager
    SUPERSEDED = "superseded"  # a later CSR of the client renews the same certificate


@dataclass(frozen=True)
class DeviceRequest:
    id: int
    client_id: int
    names: tuple[str, ...]
    challenge: str
    state: RequestState
    created_at: datetime
    certificate_id: int | None = None
    reason: str | None = None  # why it was denied
    decided_by: str | None = None
    decided_at: datetime | None = None
    renewal: Renewal | None = None  # who it asked to renew it; None: the client's setting

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_id": self.client_id,
            "names": list(self.names),
            "challenge": self.challenge,
            "state": self.state.value,
            "certificate_id": self.certificate_id,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "created_at": self.created_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "renewal": self.renewal.value if self.renewal else None,
        }
