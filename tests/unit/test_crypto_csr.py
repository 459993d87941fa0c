"""CSRs carry the names in SAN, the first name as CN when it fits, and the subject fields."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certbroker.crypto.csr import make_csr
from certbroker.crypto.keys import PrivateKey, generate_private_key
from certbroker.domain.errors import UsageError
from certbroker.domain.keys import KeyType
from certbroker.domain.subject import Subject


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_private_key(KeyType.EC_P256)


def _load(pem: bytes) -> x509.CertificateSigningRequest:
    assert pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    return x509.load_pem_x509_csr(pem)


def _sans(csr: x509.CertificateSigningRequest) -> list[str]:
    ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


def _attr(csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in csr.subject.get_attributes_for_oid(oid)]


def test_csr_has_cn_all_sans_and_a_valid_signature(key: PrivateKey) -> None:
    names = ["example.com", "www.example.com", "*.api.example.com"]
    csr = _load(make_csr(key, names))
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert _attr(csr, NameOID.COMMON_NAME) == ["example.com"]
    assert _sans(csr) == names
    ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not ext.critical
    assert _spki(csr.public_key()) == _spki(key.public_key())  # signed with the given key


def _spki(public_key: object) -> bytes:
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.EC_P384])
def test_csr_for_other_key_types(key_type: KeyType) -> None:
    csr = _load(make_csr(generate_private_key(key_type), ["a.example"]))
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)


def test_long_first_name_has_no_cn_but_is_in_san(key: PrivateKey) -> None:
    long_name = ("a" * 60) + ".example.com"  # 72 characters: too long for a CN
    csr = _load(make_csr(key, [long_name, "short.example.com"]))
    assert _attr(csr, NameOID.COMMON_NAME) == []
    assert _sans(csr) == [long_name, "short.example.com"]
    # Empty subject: RFC 5280 wants the SAN critical then.
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_cn_of_exactly_64_characters_is_kept(key: PrivateKey) -> None:
    name = ("b" * 52) + ".example.com"
    assert len(name) == 64
    assert _attr(_load(make_csr(key, [name])), NameOID.COMMON_NAME) == [name]


def test_subject_fields(key: PrivateKey) -> None:
    subject = Subject(
        country="de",
        state="Berlin",
        city="Berlin",
        org="Example GmbH",
        ou="Platform",
        email="pki@example.com",
    )
    csr = _load(make_csr(key, ["example.com"], subject))
    assert csr.is_signature_valid
    assert _attr(csr, NameOID.COUNTRY_NAME) == ["DE"]
    assert _attr(csr, NameOID.STATE_OR_PROVINCE_NAME) == ["Berlin"]
    assert _attr(csr, NameOID.LOCALITY_NAME) == ["Berlin"]
    assert _attr(csr, NameOID.ORGANIZATION_NAME) == ["Example GmbH"]
    assert _attr(csr, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["Platform"]
    assert _attr(csr, NameOID.EMAIL_ADDRESS) == ["pki@example.com"]
    assert _attr(csr, NameOID.COMMON_NAME) == ["example.com"]


def test_partial_subject_only_adds_set_fields(key: PrivateKey) -> None:
    csr = _load(make_csr(key, ["example.com"], Subject(org="Example")))
    oids = [a.oid for a in csr.subject]
    assert oids == [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME]


def test_duplicate_names_are_listed_once(key: PrivateKey) -> None:
    csr = _load(make_csr(key, ["example.com", "www.example.com", "EXAMPLE.com"]))
    assert _sans(csr) == ["example.com", "www.example.com"]


def test_no_names_is_an_error(key: PrivateKey) -> None:
    with pytest.raises(UsageError, match="at least one name"):
        make_csr(key, [])


def test_non_ascii_name_is_an_error(key: PrivateKey) -> None:
    with pytest.raises(UsageError, match="punycode"):
        make_csr(key, ["bücher.example"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"country": "DEU"}, "two-letter"),
        ({"country": "D"}, "two-letter"),
        ({"country": "1A"}, "two-letter"),
        ({"country": "ÄÖ"}, "two-letter"),
        ({"org": "x" * 65}, "org is 65 characters long"),
        ({"ou": "y" * 100}, "ou is 100 characters long"),
        ({"city": "c" * 65}, "limit is 64"),
        ({"email": "not-an-email"}, "not an email address"),
        ({"email": "a" * 60 + "@example.com"}, "email is 72 characters long"),
        ({"state": ""}, "state is empty"),
        ({"org": "Evil\nCorp"}, "control characters"),
    ],
)
def test_bad_subject_values(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        Subject(**kwargs)


def test_subject_field_of_64_characters_is_fine() -> None:
    assert Subject(org="o" * 64).org == "o" * 64
