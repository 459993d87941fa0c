"""Private keys: generate, serialise, load what users bring, and check what they are.

Only the key types in `KeyType` are accepted anywhere, so every key the broker holds
can be named, stored and renewed the same way. Anything else is refused when it is
loaded, with a message that says what to use instead.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from josepy.errors import Error as JoseError
from josepy.jwk import JWK, JWKEC, JWKRSA

from certbroker.domain.errors import UsageError
from certbroker.domain.keys import KeyType

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = [
    "PrivateKey",
    "generate_private_key",
    "key_matches_certificate",
    "key_type_of",
    "load_private_key",
    "private_key_to_pem",
    "public_key_sha256",
]

_USE_INSTEAD = "use an EC P-256/P-384 or RSA 2048-4096 key"
_NOT_A_KEY = "not a PEM, DER or JWK private key"

_CURVES: dict[KeyType, type[ec.EllipticCurve]] = {
    KeyType.EC_P256: ec.SECP256R1,
    KeyType.EC_P384: ec.SECP384R1,
}
_CURVE_NAMES: dict[str, KeyType] = {
    ec.SECP256R1.name: KeyType.EC_P256,
    ec.SECP384R1.name: KeyType.EC_P384,
}
_RSA_SIZES: dict[int, KeyType] = {
    2048: KeyType.RSA2048,
    3072: KeyType.RSA3072,
    4096: KeyType.RSA4096,
}

# Key classes cryptography can load that we refuse, with the name users know them by.
_OTHER_KEY_NAMES: tuple[tuple[type[Any], str], ...] = (
    (ed25519.Ed25519PrivateKey, "Ed25519"),
    (ed448.Ed448PrivateKey, "Ed448"),
    (x25519.X25519PrivateKey, "X25519"),
    (x448.X448PrivateKey, "X448"),
    (dsa.DSAPrivateKey, "DSA"),
)


def generate_private_key(key_type: KeyType) -> PrivateKey:
    if key_type.is_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=key_type.rsa_bits)
    return ec.generate_private_key(_CURVES[key_type]())


def private_key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM without a passphrase; keys are sealed at rest by the store, not here."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _unsupported_reason(key: object) -> str | None:
    """Why `key` cannot be used, or None when it maps to a KeyType."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size in _RSA_SIZES:
            return None
        return f"RSA {key.key_size}-bit keys are not supported; {_USE_INSTEAD}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name in _CURVE_NAMES:
            return None
        return f"EC curve {key.curve.name} is not supported; {_USE_INSTEAD}"
    for cls, name in _OTHER_KEY_NAMES:
        if isinstance(key, cls):
            return f"{name} keys are not supported; {_USE_INSTEAD}"
    return f"{type(key).__name__} keys are not supported; {_USE_INSTEAD}"


def key_type_of(key: PrivateKey) -> KeyType:
    reason = _unsupported_reason(key)
    if reason is not None:
        raise UsageError(reason)
    if isinstance(key, rsa.RSAPrivateKey):
        return _RSA_SIZES[key.key_size]
    return _CURVE_NAMES[key.curve.name]


def load_private_key(data: bytes, source: str = "key file") -> PrivateKey:
    """Load a PEM (PKCS#1, PKCS#8, SEC1), DER or JWK private key of a supported type.

    `source` names where the bytes came from (a path, "--key", "the stored key") and
    starts every error message, so the user knows which input to fix.
    """
    text = data.strip()
    if not text:
        raise UsageError(f"{source}: is empty; give a PEM, DER or JWK private key")
    key: object
    if text.startswith(b"{"):
        key = _load_jwk(text, source)
    elif b"-----BEGIN " in text:
        key = _load_pem(text, source)
    else:
        # DER is binary: stripping whitespace could eat real bytes, so use `data`.
        key = _load_der(data, source)
    reason = _unsupported_reason(key)
    if reason is not None:
        raise UsageError(f"{source}: {reason}")
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def _encrypted(source: str) -> UsageError:
    return UsageError(
        f"{source}: the key is encrypted with a passphrase; "
        "decrypt it first (openssl pkey -in K -out K2)"
    )


def _load_pem(text: bytes, source: str) -> object:
    # Look at the PEM labels first: they give a better message than the parser can.
    if b"ENCRYPTED PRIVATE KEY-----" in text or b"Proc-Type: 4,ENCRYPTED" in text:
        raise _encrypted(source)
    if b"PRIVATE KEY-----" not in text:
        if b"-----BEGIN CERTIFICATE REQUEST-----" in text:
            what = "a certificate request (CSR)"
        elif b"-----BEGIN CERTIFICATE-----" in text:
            what = "a certificate"
        elif b"PUBLIC KEY-----" in text:
            what = "a public key"
        else:
            raise UsageError(f"{source}: {_NOT_A_KEY}")
        raise UsageError(f"{source}: holds {what}, not a private key")
    try:
        return serialization.load_pem_private_key(text, password=None)
    except TypeError:
        raise _encrypted(source) from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(
            f"{source}: the PEM private key is damaged or of an unknown kind; {_USE_INSTEAD}"
        ) from None


def _load_der(data: bytes, source: str) -> object:
    try:
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise _encrypted(source) from None
    except (ValueError, UnsupportedAlgorithm):
        pass
    # A DER certificate is a common mix-up; say so rather than "not a key".
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        raise UsageError(f"{source}: {_NOT_A_KEY}") from None
    raise UsageError(f"{source}: holds a certificate, not a private key")


def _load_jwk(text: bytes, source: str) -> object:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{source}: {_NOT_A_KEY}") from None
    if not isinstance(obj, dict) or "kty" not in obj:
        raise UsageError(f"{source}: {_NOT_A_KEY}")
    kty = obj.get("kty")
    if kty == "OKP":
        crv = obj.get("crv")
        name = crv if isinstance(crv, str) and crv else "OKP"
        raise UsageError(f"{source}: {name} keys are not supported; {_USE_INSTEAD}")
    if kty not in ("RSA", "EC"):
        raise UsageError(f"{source}: JWK key type {kty!r} is not supported; {_USE_INSTEAD}")
    # josepy would happily load a public JWK; an account key must be the private half.
    if "d" not in obj:
        raise UsageError(f"{source}: the JWK holds only a public key; export the private key")
    try:
        jwk = JWK.from_json(obj)
    except (JoseError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{source}: the JWK private key is damaged ({_one_line(exc)})") from None
    if not isinstance(jwk, JWKRSA | JWKEC):
        raise UsageError(f"{source}: {_NOT_A_KEY}")
    # josepy wraps keys in a Comparable*Key proxy; round-trip through DER to get a plain
    # cryptography key, which every other part of the broker expects.
    wrapped: Any = jwk.key
    try:
        der: bytes = wrapped.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return serialization.load_der_private_key(der, password=None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"{source}: the JWK private key is damaged ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def _spki_der(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def key_matches_certificate(key: PrivateKey, cert: x509.Certificate) -> bool:
    return _spki_der(key.public_key()) == _spki_der(cert.public_key())


def public_key_sha256(
    key_or_cert: PrivateKey | x509.Certificate | x509.CertificateSigningRequest,
) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: a stable id for 'the same key'."""
    return hashlib.sha256(_spki_der(key_or_cert.public_key())).hexdigest()
