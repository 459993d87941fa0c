"""Certificate signing requests for the names of a certificate.

ACME CAs take the names from subjectAltName and ignore most of the subject, but some
internal CAs (and some auditors) want organisation fields, so they can be set.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certbroker.crypto.keys import PrivateKey
from certbroker.domain.errors import UsageError
from certbroker.domain.subject import MAX_FIELD_LENGTH, Subject

_OIDS: dict[str, x509.ObjectIdentifier] = {
    "country": NameOID.COUNTRY_NAME,
    "state": NameOID.STATE_OR_PROVINCE_NAME,
    "city": NameOID.LOCALITY_NAME,
    "org": NameOID.ORGANIZATION_NAME,
    "ou": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "email": NameOID.EMAIL_ADDRESS,
}


def _attributes(subject: Subject) -> list[x509.NameAttribute[str]]:
    """The set fields as name attributes, in the conventional C, ST, L, O, OU order."""
    attrs: list[x509.NameAttribute[str]] = []
    for name, oid in _OIDS.items():
        value = getattr(subject, name)
        if value is None:
            continue
        if name == "country":
            value = value.upper()
        attrs.append(x509.NameAttribute(oid, value))
    return attrs


def make_csr(key: PrivateKey, names: Sequence[str], subject: Subject | None = None) -> bytes:
    """A PEM CSR for `names`, signed with SHA-256; the first name is the primary one."""
    unique: list[str] = []
    seen: set[str] = set()
    for name in names:
        if name.lower() not in seen:
            seen.add(name.lower())
            unique.append(name)
    if not unique:
        raise UsageError("a certificate needs at least one name")
    try:
        sans = [x509.DNSName(name) for name in unique]
    except ValueError:
        raise UsageError(
            "certificate names must be ASCII; write internationalised names as punycode (xn--...)"
        ) from None

    attrs: list[x509.NameAttribute[str]] = []
    # A CN longer than 64 characters is invalid; the SAN alone carries the name then.
    if len(unique[0]) <= MAX_FIELD_LENGTH:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, unique[0]))
    if subject is not None:
        attrs.extend(_attributes(subject))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attrs))
        # RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
        .add_extension(x509.SubjectAlternativeName(sans), critical=not attrs)
    )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)
