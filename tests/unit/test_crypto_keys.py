"""Key generation, loading from every format users bring, and the error for each bad input."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from josepy.jwk import JWKEC, JWKRSA

from certbroker.crypto.keys import (
    PrivateKey,
    generate_private_key,
    key_matches_certificate,
    key_type_of,
    load_private_key,
    private_key_to_pem,
    public_key_sha256,
)
from certbroker.domain.errors import UsageError
from certbroker.domain.keys import KeyType
from tests.support.certs import self_signed

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL
NOENC = serialization.NoEncryption()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _same(a: PrivateKey, b: PrivateKey) -> bool:
    return a.private_bytes(DER, PKCS8, NOENC) == b.private_bytes(DER, PKCS8, NOENC)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_each_key_type_generates_and_round_trips(key_type: KeyType) -> None:
    key = generate_private_key(key_type)
    assert key_type_of(key) is key_type
    if key_type.is_rsa:
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == key_type.rsa_bits
        assert key.public_key().public_numbers().e == 65537
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
    pem = private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not encrypted
    loaded = load_private_key(pem)
    assert _same(key, loaded)
    assert key_type_of(loaded) is key_type


@pytest.mark.parametrize(
    ("fmt", "encoding", "marker"),
    [
        ("pkcs1", PEM, b"-----BEGIN RSA PRIVATE KEY-----"),
        ("pkcs8", PEM, b"-----BEGIN PRIVATE KEY-----"),
        ("pkcs1-der", DER, None),
        ("pkcs8-der", DER, None),
    ],
)
def test_load_rsa_key_formats(
    rsa_key: rsa.RSAPrivateKey,
    fmt: str,
    encoding: serialization.Encoding,
    marker: bytes | None,
) -> None:
    data = rsa_key.private_bytes(encoding, PKCS8 if "pkcs8" in fmt else TRADITIONAL, NOENC)
    if marker is not None:
        assert data.startswith(marker)
    loaded = load_private_key(data)
    assert _same(rsa_key, loaded)
    assert key_type_of(loaded) is KeyType.RSA2048


@pytest.mark.parametrize(
    ("fmt", "encoding", "marker"),
    [
        ("sec1", PEM, b"-----BEGIN EC PRIVATE KEY-----"),
        ("pkcs8", PEM, b"-----BEGIN PRIVATE KEY-----"),
        ("sec1-der", DER, None),
        ("pkcs8-der", DER, None),
    ],
)
def test_load_ec_key_formats(
    ec_key: ec.EllipticCurvePrivateKey,
    fmt: str,
    encoding: serialization.Encoding,
    marker: bytes | None,
) -> None:
    data = ec_key.private_bytes(encoding, PKCS8 if "pkcs8" in fmt else TRADITIONAL, NOENC)
    if marker is not None:
        assert data.startswith(marker)
    loaded = load_private_key(data)
    assert _same(ec_key, loaded)
    assert key_type_of(loaded) is KeyType.EC_P256


def test_load_pem_with_surrounding_text_and_a_certificate(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    # A combined file (cert + key) is a common thing to hand over as "the key".
    cert_pem = self_signed(ec_key).public_bytes(PEM)
    data = b"\n  " + cert_pem + ec_key.private_bytes(PEM, TRADITIONAL, NOENC) + b"\n\n"
    assert _same(ec_key, load_private_key(data))


def test_load_jwk_rsa(rsa_key: rsa.RSAPrivateKey) -> None:
    data = JWKRSA(key=rsa_key).json_dumps().encode()
    assert b'"kty": "RSA"' in data
    loaded = load_private_key(data)
    assert isinstance(loaded, rsa.RSAPrivateKey)  # a plain cryptography key, not josepy's
    assert _same(rsa_key, loaded)


def test_load_jwk_ec() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    data = JWKEC(key=key).json_dumps().encode()
    loaded = load_private_key(data)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert _same(key, loaded)
    assert key_type_of(loaded) is KeyType.EC_P384


def test_load_jwk_pretty_printed_with_extra_members(ec_key: ec.EllipticCurvePrivateKey) -> None:
    obj = json.loads(JWKEC(key=ec_key).json_dumps())
    obj["kid"] = "account-1"
    obj["use"] = "sig"
    loaded = load_private_key(json.dumps(obj, indent=2).encode() + b"\n")
    assert _same(ec_key, loaded)


def _error(data: bytes, source: str = "key file") -> str:
    with pytest.raises(UsageError) as info:
        load_private_key(data, source=source)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{source}: ")
    return message


def test_garbage_is_rejected() -> None:
    assert _error(b"hello, I am not a key") == "key file: not a PEM, DER or JWK private key"
    assert _error(b"\x00\x01\x02\xff" * 10) == "key file: not a PEM, DER or JWK private key"


def test_empty_input_is_rejected() -> None:
    assert "is empty" in _error(b"")
    assert "is empty" in _error(b"  \n\t\n")


def test_source_names_the_input() -> None:
    assert _error(b"junk", source="/etc/keys/a.key").startswith("/etc/keys/a.key: ")


@pytest.mark.parametrize(
    ("encoding", "fmt"),
    [(PEM, TRADITIONAL), (PEM, PKCS8), (DER, PKCS8)],
)
def test_encrypted_keys_are_rejected(
    ec_key: ec.EllipticCurvePrivateKey,
    encoding: serialization.Encoding,
    fmt: serialization.PrivateFormat,
) -> None:
    data = ec_key.private_bytes(encoding, fmt, serialization.BestAvailableEncryption(b"secret"))
    assert _error(data) == (
        "key file: the key is encrypted with a passphrase; "
        "decrypt it first (openssl pkey -in K -out K2)"
    )


def test_ed25519_is_rejected() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    expected = (
        "key file: Ed25519 keys are not supported; use an EC P-256/P-384 or RSA 2048-4096 key"
    )
    assert _error(key.private_bytes(PEM, PKCS8, NOENC)) == expected
    assert _error(key.private_bytes(DER, PKCS8, NOENC)) == expected
    jwk = b'{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}'
    assert _error(jwk) == expected


def test_unsupported_curve_and_rsa_size_are_rejected() -> None:
    p521 = ec.generate_private_key(ec.SECP521R1())
    assert "EC curve secp521r1 is not supported" in _error(p521.private_bytes(PEM, PKCS8, NOENC))
    assert "EC curve secp521r1 is not supported" in _error(JWKEC(key=p521).json_dumps().encode())
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    assert "RSA 1024-bit keys are not supported" in _error(small.private_bytes(PEM, PKCS8, NOENC))
    with pytest.raises(UsageError, match="RSA 1024-bit"):
        key_type_of(small)
    with pytest.raises(UsageError, match="secp521r1"):
        key_type_of(p521)


def test_certificate_public_key_and_csr_are_named(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = self_signed(ec_key)
    assert "holds a certificate, not a private key" in _error(cert.public_bytes(PEM))
    assert "holds a certificate, not a private key" in _error(cert.public_bytes(DER))
    public = ec_key.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert "holds a public key, not a private key" in _error(public)


def test_bad_jwks_are_rejected(ec_key: ec.EllipticCurvePrivateKey) -> None:
    public_jwk = JWKEC(key=ec_key.public_key()).json_dumps().encode()
    assert "only a public key" in _error(public_jwk)
    assert "JWK key type 'oct' is not supported" in _error(b'{"kty": "oct", "k": "c2VjcmV0"}')
    assert _error(b'{"not": "a jwk"}') == "key file: not a PEM, DER or JWK private key"
    assert _error(b"{broken json") == "key file: not a PEM, DER or JWK private key"
    assert "damaged" in _error(b'{"kty": "RSA", "d": "AQAB"}')
    assert "damaged" in _error(b'{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}')


def test_damaged_pem_is_rejected() -> None:
    data = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    assert "damaged" in _error(data)


def test_key_matches_certificate(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    cert = self_signed(ec_key)
    assert key_matches_certificate(ec_key, cert)
    assert key_matches_certificate(load_private_key(private_key_to_pem(ec_key)), cert)
    assert not key_matches_certificate(rsa_key, cert)
    assert not key_matches_certificate(ec.generate_private_key(ec.SECP256R1()), cert)


def test_public_key_sha256(ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    digest = public_key_sha256(ec_key)
    assert len(digest) == 64
    assert digest == public_key_sha256(self_signed(ec_key))
    assert digest != public_key_sha256(rsa_key)
