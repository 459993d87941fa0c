"""ACME Renewal Information (RFC 9773): the identifier of a certificate."""

from __future__ import annotations

import base64

from cryptography import x509


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ari_cert_id(cert: x509.Certificate) -> str:
    """base64url(Authority Key Identifier's keyIdentifier) "." base64url(serial as DER
    INTEGER contents), as in RFC 9773 §4.1. Raises ValueError without an AKI."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no Authority Key Identifier") from None
    if aki.key_identifier is None:
        raise ValueError("the certificate's Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    # Two's complement, big-endian, minimal: a leading 0x00 when the high bit is set.
    der = serial.to_bytes((serial.bit_length() + 8) // 8 or 1, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(der)}"
