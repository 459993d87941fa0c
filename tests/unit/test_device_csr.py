"""A device's CSR: what is read from it (names, public key) and every way it is refused."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from certbroker.crypto.device_csr import read_device_csr
from certbroker.domain.errors import UsageError


def csr(key, names, *, cn=None, extra=None):  # type: ignore[no-untyped-def]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def spki(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_names_and_the_public_key_are_taken_and_requested_extensions_ignored() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    made = csr(
        key,
        ["gw1.example.com", "GW1.example.com", "alt.example.com"],
        cn="gw1.example.com",
        extra=x509.BasicConstraints(ca=True, path_length=None),  # asks to be a CA: ignored
    )
    pem = made.public_bytes(serialization.Encoding.PEM)
    read = read_device_csr(pem.decode())
    assert read.names == ["gw1.example.com", "alt.example.com"]
    assert read.public_key_der == spki(key) and read.key_type == "ec-p256"
    assert x509.load_pem_x509_csr(read.csr_pem).is_signature_valid
    der = base64.b64encode(made.public_bytes(serialization.Encoding.DER))
    assert read_device_csr(der).names == read.names  # base64 DER, as devices send it too
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old_style = read_device_csr(csr(rsa_key, [], cn="legacy.example.com").public_bytes(
        serialization.Encoding.PEM
    ))  # fmt: skip
    assert old_style.names == ["legacy.example.com"] and old_style.key_type == "rsa2048"
    p384 = read_device_csr(
        csr(ec.generate_private_key(ec.SECP384R1()), ["a.example.com"]).public_bytes(
            serialization.Encoding.PEM
        )
    )
    assert p384.key_type == "ec-p384"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (
            rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505 - the weak key refused
            "1024 bits is too weak",
        ),
        (ec.generate_private_key(ec.SECP521R1()), "curve secp521r1 is not accepted"),
        (ed25519.Ed25519PrivateKey.generate(), "key is not accepted"),
    ],
)
def test_a_weak_or_unusual_key_is_refused(key, reason: str) -> None:  # type: ignore[no-untyped-def]
    pem = csr(key, ["gw1.example.com"]).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(UsageError, match=reason):
        read_device_csr(pem)


def test_a_broken_signature_garbage_and_too_many_names_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(csr(key, ["gw1.example.com"]).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    with pytest.raises(UsageError, match="signature does not verify"):
        read_device_csr(base64.b64encode(bytes(der)))
    for garbage, reason in [
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----", "PEM"),
        ("not base64 at all!", "neither PEM nor base64"),
        (base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), "not a certificate signing"),
        ("A" * 70_000, "a few KiB"),
    ]:
        with pytest.raises(UsageError, match=reason):
            read_device_csr(garbage)
    names = [f"n{i}.example.com" for i in range(101)]
    with pytest.raises(UsageError, match="101 names"):
        read_device_csr(csr(key, names).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UsageError, match="names no DNS name"):
        read_device_csr(csr(key, []).public_bytes(serialization.Encoding.PEM))


def test_names_the_ca_would_refuse_to_match_are_refused_here() -> None:
    """The CSR goes to the CA as the device signed it, so an entry the order cannot hold
    (an IP address, an e-mail) or a common name outside the DNS names would fail at the
    CA after an order was made; they are refused before anything is stored."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    with_ip = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("gw1.example.com"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(UsageError, match="IPAddress entries; only DNS names"):
        read_device_csr(with_ip.public_bytes(serialization.Encoding.PEM))
    stray_cn = csr(key, ["gw1.example.com"], cn="other.example.com")
    with pytest.raises(UsageError, match=r"common name 'other\.example\.com' is not among"):
        read_device_csr(stray_cn.public_bytes(serialization.Encoding.PEM))
    fine = read_device_csr(
        csr(key, ["gw1.example.com"], cn="GW1.example.com").public_bytes(serialization.Encoding.PEM)
    )
    assert fine.names == ["gw1.example.com"]
