"""DNS names as ACME CAs accept them: normalised, IDNA-encoded and checked."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import idna

from certbroker.domain.errors import UsageError

MAX_NAMES = 100
_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def _is_ip(text: str) -> bool:
    candidate = text.strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def normalize_name(name: str) -> str:
    raw = name
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise UsageError(f"{raw!r} is empty; give a DNS name such as www.example.com")
    if _is_ip(text):
        raise UsageError(
            f"{raw!r} is an IP address; certbroker issues certificates for DNS names only"
        )
    wildcard = text.startswith("*.")
    base = text[2:] if wildcard else text
    if "*" in base:
        raise UsageError(
            f"{raw!r}: a wildcard may only be the whole leftmost label, as in *.example.com"
        )
    labels = base.split(".")
    if any(label == "" for label in labels):
        raise UsageError(f"{raw!r} has an empty label; remove the extra dot")
    encoded = []
    for label in labels:
        try:
            ascii_label = idna.encode(label, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            if len(label) > 63:
                raise UsageError(
                    f"label {label[:20]!r}… in {raw!r} is {len(label)} characters; the limit is 63"
                ) from None
            raise UsageError(f"{raw!r} is not a valid DNS name ({exc})") from None
        ascii_label = ascii_label.lower()
        if len(ascii_label) > 63:
            raise UsageError(
                f"label {ascii_label[:20]!r}… in {raw!r} is {len(ascii_label)} characters; "
                "the limit is 63"
            )
        if not _LDH.match(ascii_label):
            raise UsageError(
                f"{raw!r}: label {ascii_label!r} may hold only letters, digits and inner hyphens"
            )
        encoded.append(ascii_label)
    if len(encoded) < 2:
        raise UsageError(f"{raw!r} is not a fully qualified name; give e.g. {raw}.example.com")
    result = ".".join(encoded)
    if wildcard:
        result = "*." + result
    if len(result) > 253:
        raise UsageError(f"{raw!r} is {len(result)} characters long; the limit is 253")
    return result


def validate_names(names: Sequence[str], challenge: str = "http-01") -> list[str]:
    if not names:
        raise UsageError("give at least one DNS name")
    if len(names) > MAX_NAMES:
        raise UsageError(
            f"{len(names)} names given; a certificate holds at most {MAX_NAMES} — split them"
        )
    seen: dict[str, str] = {}
    result = []
    for name in names:
        normal = normalize_name(name)
        if normal in seen:
            raise UsageError(f"{seen[normal]!r} and {name!r} are the same name; give it once")
        if is_wildcard(normal) and challenge == "http-01":
            raise UsageError(
                f"{name!r} is a wildcard; wildcard certificates need DNS validation: "
                "use --challenge dns-01"
            )
        seen[normal] = name
        result.append(normal)
    return result
