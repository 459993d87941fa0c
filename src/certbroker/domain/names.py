"""DNS names a user asks a certificate for: normalization and validation.

Every name goes through `normalize_name` before it reaches the store or the CA,
so that 'Example.COM.', 'example.com' and ' example.com ' are one name, and an
internationalized name is always kept in its ASCII (A-label, punycode) form,
which is what ACME identifiers and certificate SANs carry.

Rules (each refusal is a one-line `UsageError` naming the input):

* surrounding whitespace and ONE trailing dot are dropped, letters lowercased;
* Unicode is mapped with UTS #46 (non-transitional, so 'ß' stays 'ß') and each
  label is encoded as an IDNA 2008 A-label;
* IP addresses (v4, v6, bracketed v6), URLs and host:port are refused;
* at least two labels, none empty, each 1-63 characters, the whole name at most
  253 characters (measured in its ASCII form);
* labels hold only letters, digits and hyphens (no underscores), do not start
  or end with a hyphen, and do not have '--' in positions 3-4 unless they are
  valid 'xn--' A-labels;
* the last label is not all digits (no such top-level domain exists, and
  '1.2.3' / '256.1.1.1' are almost certainly mistyped addresses);
* a wildcard is only the whole leftmost label, over a base of at least two
  labels: '*.example.com' yes; '*', '*.com', 'a.*.com', '*a.example.com' no.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import idna

from certbroker.domain.errors import UsageError
from certbroker.domain.models import ChallengeType

MAX_NAMES = 100
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

# Longer inputs are refused before any Unicode processing (the idna package has
# its own, lower, defensive limit and would otherwise give a less useful error).
_MAX_INPUT_LENGTH = 1000

_LDH_ASCII = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_PORT_RE = re.compile(r"^(?P<host>[^:\[\]]+):(?P<port>\d+)$")


def _show(text: str) -> str:
    """repr() of `text`, shortened in the middle when it is too long for one readable line."""
    if len(text) > 80:
        text = text[:60] + "…" + text[-15:]
    return repr(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def is_wildcard(name: str) -> bool:
    """True for a wildcard name such as '*.example.com' (normalized or not)."""
    return name.strip().startswith("*.")


def _refuse_ip(name: str, text: str) -> None:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return
    raise UsageError(
        f"{_show(name)} is an IP address; certbroker issues certificates for DNS names only"
    )


def _refuse_url_or_port(name: str, text: str) -> None:
    if "/" in text:
        host = text.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        example = f" such as {_show(host)}" if host else ""
        raise UsageError(
            f"{_show(name)} looks like a URL; give just the DNS name{example}, "
            "without scheme, path or port"
        )
    match = _PORT_RE.match(text)
    if match:
        raise UsageError(
            f"{_show(name)} includes a port; give just the DNS name {_show(match['host'])}"
        )


def _map_unicode(name: str, text: str) -> str:
    """Lowercase and apply the UTS #46 mapping (full-width forms, case folding, '。' to '.')."""
    if text.isascii():
        return text.lower()
    try:
        # std3_rules=False keeps '_', '*', ' ' and friends so that the checks
        # below can explain them; the IDNA 2008 label checks run per label.
        return idna.uts46_remap(text, std3_rules=False)
    except idna.IDNAError as err:
        raise UsageError(
            f"{_show(name)} contains a character that is not allowed in DNS names "
            f"({_one_line(str(err))}); remove it or check the spelling"
        ) from None


def _check_ascii_chars(name: str, label: str) -> None:
    for char in label:
        if not char.isascii() or char in _LDH_ASCII:
            continue
        where = f"label {_show(label)} in {_show(name)}"
        if char == "_":
            raise UsageError(
                f"{where} contains an underscore; certificates are issued for host names, "
                "which may hold only letters, digits and hyphens"
            )
        raise UsageError(
            f"{where} contains {char!r}, which is not allowed in DNS names; "
            "use only letters, digits and hyphens"
        )


def _too_long_label(name: str, label: str, ascii_form: str) -> UsageError:
    if ascii_form == label:
        return UsageError(
            f"label {_show(label)} in {_show(name)} is {len(label)} characters; "
            f"the limit is {MAX_LABEL_LENGTH}"
        )
    return UsageError(
        f"label {_show(label)} in {_show(name)} is {len(ascii_form)} characters in its "
        f"ASCII form {_show(ascii_form)}; the limit is {MAX_LABEL_LENGTH}"
    )


def _encode_label(name: str, label: str) -> str:
    """Check one (already mapped, non-wildcard) label and return its A-label form."""
    _check_ascii_chars(name, label)
    where = f"label {_show(label)} in {_show(name)}"
    if label.startswith("-") or label.endswith("-"):
        raise UsageError(
            f"{where} starts or ends with a hyphen; hyphens are allowed only inside a label"
        )

    if label.isascii():
        if len(label) > MAX_LABEL_LENGTH:
            raise _too_long_label(name, label, label)
        if label.startswith("xn--"):
            try:
                idna.ulabel(label)
            except idna.IDNAError as err:
                raise UsageError(
                    f"{where} is not a valid IDNA A-label ({_one_line(str(err))}); "
                    "check the spelling, or give the name in its Unicode form"
                ) from None
        elif label[2:4] == "--":
            raise UsageError(
                f"{where} has '--' in the third and fourth positions, which is reserved for "
                "encoded (xn--) labels; change the name"
            )
        return label

    # A U-label: its A-label is 'xn--' + punycode. Measure before validating so
    # an over-long label gets the length message rather than a generic one.
    ascii_form = "xn--" + label.encode("punycode").decode("ascii")
    if len(ascii_form) > MAX_LABEL_LENGTH:
        raise _too_long_label(name, label, ascii_form)
    try:
        return idna.alabel(label).decode("ascii")
    except idna.IDNAError as err:
        raise UsageError(
            f"{where} is not a valid internationalized label ({_one_line(str(err))}); "
            "check the spelling"
        ) from None


def normalize_name(name: str) -> str:
    """Return the canonical ASCII form of one DNS name, or raise `UsageError`.

    'Bücher.Example.' -> 'xn--bcher-kva.example'; '*.Example.com' -> '*.example.com'.
    """
    text = name.strip()
    if not text:
        raise UsageError(f"{_show(name)} is empty; give a DNS name such as 'example.com'")
    if len(text) > _MAX_INPUT_LENGTH:
        raise UsageError(
            f"{_show(name)} is {len(text)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    text = _map_unicode(name, text)
    if text.endswith("."):
        text = text[:-1]
    _refuse_ip(name, text)
    _refuse_url_or_port(name, text)
    if not text:
        raise UsageError(f"{_show(name)} is not a DNS name; give a name such as 'example.com'")

    labels = text.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
    if any("*" in label for label in labels):
        raise UsageError(
            f"{_show(name)} has a wildcard that is not the whole leftmost label; "
            "write it as '*.' followed by the base name, as in '*.example.com'"
        )
    if "" in labels:
        raise UsageError(
            f"{_show(name)} has an empty label; remove the extra dot (labels are separated by "
            "exactly one '.')"
        )
    if wildcard and len(labels) < 2:
        # '*' and '*.com': no CA issues a wildcard over a bare top-level domain.
        raise UsageError(
            f"{_show(name)} is a wildcard over fewer than two labels; a wildcard covers one "
            "level below a registered name, as in '*.example.com'"
        )
    encoded = [_encode_label(name, label) for label in labels]
    if len(encoded) < 2:
        raise UsageError(
            f"{_show(name)} has only one label; give a fully qualified name such as "
            f"{_show(encoded[0] + '.example.com')}"
        )
    if encoded[-1].isdigit():
        raise UsageError(
            f"{_show(name)} ends in the all-numeric label {_show(encoded[-1])}; it is neither "
            "an IP address nor a DNS name, check the spelling"
        )
    result = ("*." if wildcard else "") + ".".join(encoded)
    if len(result) > MAX_NAME_LENGTH:
        form = "" if result == text else f" in its ASCII form {_show(result)}"
        raise UsageError(
            f"{_show(name)} is {len(result)} characters long{form}; the limit is {MAX_NAME_LENGTH}"
        )
    return result


def validate_names(
    names: Sequence[str], challenge: ChallengeType = ChallengeType.HTTP_01
) -> list[str]:
    """Normalize the names for one certificate, in order (the first is the common name).

    Refuses an empty list, more than MAX_NAMES names, duplicates after
    normalization, and wildcards unless the challenge is a DNS one (neither
    http-01 nor tls-alpn-01 can validate a wildcard).
    """
    if isinstance(names, str):
        raise TypeError("validate_names() takes a sequence of names, not a single string")
    if not names:
        raise UsageError("no names given; give at least one DNS name, such as 'example.com'")
    if len(names) > MAX_NAMES:
        raise UsageError(
            f"{len(names)} names given; a certificate can hold at most {MAX_NAMES}, "
            "split them across several certificates"
        )
    dns_challenge = challenge == ChallengeType.DNS_01
    seen: dict[str, str] = {}
    result: list[str] = []
    for name in names:
        normalized = normalize_name(name)
        if normalized in seen:
            first = seen[normalized]
            if first == name:
                raise UsageError(f"{_show(name)} is given twice; give it once")
            raise UsageError(f"{_show(first)} and {_show(name)} are the same name; give it once")
        if is_wildcard(normalized) and not dns_challenge:
            raise UsageError(
                f"{_show(name)} is a wildcard; wildcard certificates need DNS validation "
                f"and cannot be validated with {challenge}: use --challenge dns-01"
            )
        seen[normalized] = name
        result.append(normalized)
    return result
