"""DNS-01 in the user's words: DNS accounts, the zones they serve, and challenge records.

Pure: no I/O. The adapters that talk to DNS servers are in certbroker/dns/.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from certbroker.domain.errors import UsageError

CHALLENGE_LABEL = "_acme-challenge"
MANUAL = "manual"  # --dns-account manual: a person writes the records
RFC2136 = "rfc2136"  # certbroker's own provider; every other one comes from dns-lexicon
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
MASK = "********"

Server = tuple[str, int]  # (IP address, port)

_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def challenge_record_name(identifier: str) -> str:
    """Where the TXT record for `identifier` goes: '_acme-challenge.<name>' (RFC 8555 §8.4).
    A wildcard's record is its base name's: '*.example.com' -> '_acme-challenge.example.com'."""
    return f"{CHALLENGE_LABEL}.{identifier.removeprefix('*.').rstrip('.').lower()}"


def txt_value(key_authorization: str) -> str:
    """The TXT value: base64url(SHA-256(key authorization)) without padding (RFC 8555 §8.4)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The longest of `zones` that `name` is in (equal to or below it), or None."""
    name = name.rstrip(".").lower()
    best: str | None = None
    for zone in zones:
        z = zone.rstrip(".").lower()
        if (name == z or name.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


def parse_servers(text: str, setting: str) -> tuple[Server, ...]:
    """'host:port, host' -> ((host, port), (host, 53)); hosts must be IP addresses."""
    servers: list[Server] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port_text = item, "53"
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":") or "53"
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(
                f"{setting}: {item!r} is not IP[:PORT]; give IP addresses, e.g. "
                "127.0.0.1:5353,[::1]:53"
            ) from None
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"{setting}: {item!r} has no valid port")
        servers.append((host, int(port_text)))
    return tuple(servers)


def show_server(server: Server) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_account_name(name: str) -> str:
    if not _ACCOUNT_NAME.match(name):
        raise UsageError(
            f"DNS account name {name!r} is not usable; use 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    if name.lower() == MANUAL:
        raise UsageError(
            f"{MANUAL!r} is reserved for manual DNS validation (--dns-account manual); "
            "choose another name"
        )
    return name


@dataclass(frozen=True)
class DnsAccount:
    """A set of credentials for one DNS provider. `settings` are shown to users; the
    secret options are only their names here (the values stay sealed in the store)."""

    id: int
    name: str
    provider: str
    settings: Mapping[str, str]
    secret_names: tuple[str, ...]
    zones: tuple[str, ...]
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        options: dict[str, str] = dict(self.settings)
        options.update({name: MASK for name in self.secret_names})
        return {
            "id": self.id,
            "name": self.name,
            "provider": self.provider,
            "options": dict(sorted(options.items())),
            "zones": list(self.zones),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class DnsAccountConfig:
    """Everything an adapter needs to act for one DNS account, secrets included.
    Never logged: its repr shows no option values."""

    name: str
    provider: str
    settings: Mapping[str, str]
    secrets: Mapping[str, str] = field(repr=False)
    zones: tuple[str, ...] = ()

    def options(self) -> dict[str, str]:
        return {**self.settings, **self.secrets}


@dataclass(frozen=True)
class DnsRecord:
    """A TXT record certbroker wrote (or, in manual mode, asks a person to write)."""

    id: int
    order_id: int
    identifier: str  # the name validated, '*.example.com' for a wildcard
    name: str  # where the record goes, after following CNAMEs
    value: str
    dns_account_id: int | None  # None: manual
    written: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "name": self.name,
            "type": "TXT",
            "value": self.value,
            "written": self.written,
        }
