"""A CSR a device sends (its key never leaves it): read it, check it, and keep only what
the broker uses of it, the names and the public key.

Refused, each with the reason: what is not a CSR (PEM, or DER in base64), a signature
that does not verify, a key other than RSA of 2,048 bits or more, P-256 or P-384, a CSR
without DNS names, more than 100 of them. Requested extensions other than the names are
ignored: the CA decides them."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certbroker.domain.errors import UsageError
from certbroker.domain.names import MAX_NAMES

MIN_RSA_BITS = 2048
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
MAX_CSR = 64 * 1024


@dataclass(frozen=True)
class DeviceCsr:
    names: list[str]  # as the CSR lists them (SAN; the CN when there is no SAN), deduplicated
    public_key_der: bytes  # SubjectPublicKeyInfo: what the issued certificate must carry
    csr_pem: bytes  # the CSR as sent to the CA at finalize (the device signed it)
    key_type: str  # rsa2048 … rsa4096 (or rsaNNNN), ec-p256, ec-p384


def _load(data: str | bytes) -> x509.CertificateSigningRequest:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_CSR:
        raise UsageError(f"csr: {len(raw)} bytes; a CSR is a few KiB at most")
    if b"-----BEGIN" in raw:
        try:
            return x509.load_pem_x509_csr(raw)
        except ValueError:
            raise UsageError("csr: not a PEM certificate signing request") from None
    try:
        der = base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("csr: neither PEM nor base64 DER") from None
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise UsageError("csr: the base64 DER is not a certificate signing request") from None


def _key_type(csr: x509.CertificateSigningRequest) -> str:
    try:
        key = csr.public_key()
    except (ValueError, TypeError):
        raise UsageError("csr: its public key cannot be read") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise UsageError(
                f"csr: an RSA key of {key.key_size} bits is too weak; use {MIN_RSA_BITS} bits "
                "or more, or EC P-256 / P-384"
            )
        return f"rsa{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = CURVES.get(key.curve.name)
        if curve is None:
            raise UsageError(f"csr: curve {key.curve.name} is not accepted; use P-256 or P-384")
        return f"ec-{curve.lower().replace('-', '')}"
    raise UsageError(
        f"csr: a {type(key).__name__.removesuffix('PublicKey') or 'this'} key is not accepted; "
        "use RSA (2048 bits or more), P-256 or P-384"
    )


def _names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        others = [n for n in san if not isinstance(n, x509.DNSName)]
    except x509.ExtensionNotFound:
        found, others = [], []
    except ValueError:
        raise UsageError("csr: its extensions cannot be read") from None
    if others:
        # The CSR goes to the CA as signed: a name the order does not hold fails there.
        kinds = sorted({type(n).__name__ for n in others})
        raise UsageError(
            f"csr: its subjectAltName holds {', '.join(kinds)} entries; only DNS names can "
            "be certified here: make the CSR again with DNS names alone"
        )
    common = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not found:  # an old-style CSR: the common name alone
        found = common
    elif any(c.lower() not in [f.lower() for f in found] for c in common):
        raise UsageError(
            f"csr: its common name {common[0]!r} is not among its subjectAltName DNS names; "
            "the CA would refuse it: add it to the subjectAltName, or leave the common name out"
        )
    unique: list[str] = []
    for name in found:
        if name.lower() not in [u.lower() for u in unique]:
            unique.append(name)
    if not unique:
        raise UsageError("csr: it names no DNS name (subjectAltName or common name)")
    if len(unique) > MAX_NAMES:
        raise UsageError(f"csr: {len(unique)} names; a certificate can hold at most {MAX_NAMES}")
    return unique


def read_device_csr(data: str | bytes) -> DeviceCsr:
    """The CSR checked; UsageError naming what is wrong with it."""
    csr = _load(data)
    if not csr.is_signature_valid:
        raise UsageError("csr: its signature does not verify; sign it with the key it carries")
    key_type = _key_type(csr)
    names = _names(csr)
    public = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DeviceCsr(
        names=names,
        public_key_der=public,
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
        key_type=key_type,
    )
