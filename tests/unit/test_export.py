"""Every export format, read back with an independent reader, with the right file modes."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import jks
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certbroker.crypto.export import ExportBundle, write_export
from certbroker.crypto.keys import PrivateKey, generate_private_key, private_key_to_pem
from certbroker.domain.errors import UsageError
from certbroker.domain.keys import ExportFormat, KeyType

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
PASSWORD = "correct horse"


@dataclass(frozen=True)
class Issued:
    key: PrivateKey
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    public_key: CertificatePublicKeyTypes,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    san: str | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _issue(key_type: KeyType) -> Issued:
    """A root, an intermediate and a leaf for `example.com`, made here."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Test Root", root_key.public_key(), "Test Root", root_key, ca=True)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _cert("Test Intermediate", inter_key.public_key(), "Test Root", root_key, ca=True)
    key = generate_private_key(key_type)
    leaf = _cert(
        "example.com", key.public_key(), "Test Intermediate", inter_key, ca=False, san="example.com"
    )
    return Issued(key=key, leaf=leaf, intermediate=inter, root=root)


@pytest.fixture(scope="module")
def issued() -> Issued:
    return _issue(KeyType.EC_P256)


@pytest.fixture(scope="module")
def issued_rsa() -> Issued:
    return _issue(KeyType.RSA2048)


def _bundle(issued: Issued, *, with_key: bool = True, alias: str = "example.com") -> ExportBundle:
    return ExportBundle(
        cert_pem=issued.leaf.public_bytes(PEM),
        chain_pem=issued.intermediate.public_bytes(PEM),
        key_pem=private_key_to_pem(issued.key) if with_key else None,
        alias=alias,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _key_der(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- each format --------------------------------------------------------------------------


def test_pem_directory(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "live" / "example.com"
    (tmp_path / "live").mkdir()
    written = write_export(_bundle(issued), ExportFormat.PEM, out)
    assert [p.name for p in written] == ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"]
    assert _mode(out) == 0o700
    assert x509.load_pem_x509_certificates((out / "cert.pem").read_bytes()) == [issued.leaf]
    assert x509.load_pem_x509_certificates((out / "chain.pem").read_bytes()) == [
        issued.intermediate
    ]
    assert x509.load_pem_x509_certificates((out / "fullchain.pem").read_bytes()) == [
        issued.leaf,
        issued.intermediate,
    ]
    key = serialization.load_pem_private_key((out / "privkey.pem").read_bytes(), None)
    assert _key_der(key) == _key_der(issued.key)
    assert _mode(out / "privkey.pem") == 0o600
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        assert _mode(out / name) == 0o644
    assert _leftovers(out) == []


def test_pem_directory_without_key_and_existing_dir(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    written = write_export(_bundle(issued, with_key=False), ExportFormat.PEM, out)
    assert [p.name for p in written] == ["cert.pem", "chain.pem", "fullchain.pem"]
    assert not (out / "privkey.pem").exists()
    assert _mode(out) == 0o755  # an existing directory is the user's; leave it alone


def test_pem_replaces_existing_files_with_right_modes(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "live"
    out.mkdir()
    old_key = out / "privkey.pem"
    old_key.write_bytes(b"old")
    old_key.chmod(0o644)
    write_export(_bundle(issued), ExportFormat.PEM, out)
    assert old_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(old_key) == 0o600


def test_fullchain(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "fullchain.pem"
    assert write_export(_bundle(issued, with_key=False), ExportFormat.FULLCHAIN, out) == [out]
    assert x509.load_pem_x509_certificates(out.read_bytes()) == [issued.leaf, issued.intermediate]
    assert b"PRIVATE KEY" not in out.read_bytes()
    assert _mode(out) == 0o644


def test_combined(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "haproxy.pem"
    assert write_export(_bundle(issued), ExportFormat.COMBINED, out) == [out]
    data = out.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(data, None)
    assert _key_der(key) == _key_der(issued.key)
    assert x509.load_pem_x509_certificates(data) == [issued.leaf, issued.intermediate]
    assert _mode(out) == 0o600


def test_der(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "cert.der"
    assert write_export(_bundle(issued), ExportFormat.DER, out) == [out]
    assert x509.load_der_x509_certificate(out.read_bytes()) == issued.leaf
    assert _mode(out) == 0o644


@pytest.mark.parametrize("which", ["ec", "rsa"])
def test_pkcs12(which: str, issued: Issued, issued_rsa: Issued, tmp_path: Path) -> None:
    src = issued if which == "ec" else issued_rsa
    out = tmp_path / "cert.p12"
    assert write_export(_bundle(src), ExportFormat.PKCS12, out, password=PASSWORD) == [out]
    assert _mode(out) == 0o600
    key, cert, cas = pkcs12.load_key_and_certificates(out.read_bytes(), PASSWORD.encode())
    assert key is not None
    assert _key_der(key) == _key_der(src.key)
    assert cert == src.leaf
    assert cas == [src.intermediate]
    loaded = pkcs12.load_pkcs12(out.read_bytes(), PASSWORD.encode())
    assert loaded.cert is not None
    assert loaded.cert.friendly_name == b"example.com"
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(out.read_bytes(), b"wrong password")


@pytest.mark.parametrize("which", ["ec", "rsa"])
def test_jks(which: str, issued: Issued, issued_rsa: Issued, tmp_path: Path) -> None:
    src = issued if which == "ec" else issued_rsa
    out = tmp_path / "keystore.jks"
    bundle = _bundle(src, alias="Example.COM")
    assert write_export(bundle, ExportFormat.JKS, out, password=PASSWORD) == [out]
    assert _mode(out) == 0o600
    store = jks.KeyStore.load(str(out), PASSWORD)
    assert store.store_type == "jks"
    assert list(store.private_keys) == ["example.com"]  # Java lowercases aliases
    entry = store.private_keys["example.com"]
    assert entry.is_decrypted()  # the key password is the store password
    assert entry.pkey_pkcs8 == _key_der(src.key)
    assert [cert for _, cert in entry.cert_chain] == [
        src.leaf.public_bytes(DER),
        src.intermediate.public_bytes(DER),
    ]
    with pytest.raises(jks.util.KeystoreSignatureException):
        jks.KeyStore.load(str(out), "wrong password")


def test_empty_chain(issued: Issued, tmp_path: Path) -> None:
    bundle = ExportBundle(
        cert_pem=issued.leaf.public_bytes(PEM),
        chain_pem=b"",
        key_pem=private_key_to_pem(issued.key),
        alias="example.com",
    )
    out = tmp_path / "live"
    write_export(bundle, ExportFormat.PEM, out)
    assert (out / "chain.pem").read_bytes() == b""
    assert x509.load_pem_x509_certificates((out / "fullchain.pem").read_bytes()) == [issued.leaf]
    p12 = tmp_path / "c.p12"
    write_export(bundle, ExportFormat.PKCS12, p12, password=PASSWORD)
    _, cert, cas = pkcs12.load_key_and_certificates(p12.read_bytes(), PASSWORD.encode())
    assert cert == issued.leaf
    assert cas == []


def test_empty_alias_gets_a_default(issued: Issued, tmp_path: Path) -> None:
    bundle = _bundle(issued, alias="")
    write_export(bundle, ExportFormat.PKCS12, tmp_path / "c.p12", password=PASSWORD)
    loaded = pkcs12.load_pkcs12((tmp_path / "c.p12").read_bytes(), PASSWORD.encode())
    assert loaded.cert is not None
    assert loaded.cert.friendly_name == b"certbroker"
    write_export(bundle, ExportFormat.JKS, tmp_path / "c.jks", password=PASSWORD)
    assert list(jks.KeyStore.load(str(tmp_path / "c.jks"), PASSWORD).private_keys) == ["certbroker"]


def test_modes_do_not_depend_on_umask(issued: Issued, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_export(_bundle(issued), ExportFormat.PEM, tmp_path / "live")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "live" / "cert.pem") == 0o644
    assert _mode(tmp_path / "live" / "privkey.pem") == 0o600


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [ExportFormat.PKCS12, ExportFormat.JKS])
@pytest.mark.parametrize("password", [None, ""])
def test_missing_password(
    fmt: ExportFormat, password: str | None, issued: Issued, tmp_path: Path
) -> None:
    out = tmp_path / "out.bin"
    with pytest.raises(UsageError, match=f"^{fmt.value} export needs --password$"):
        write_export(_bundle(issued), fmt, out, password=password)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", [ExportFormat.COMBINED, ExportFormat.PKCS12, ExportFormat.JKS])
def test_missing_key(fmt: ExportFormat, issued: Issued, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs the private key"):
        write_export(_bundle(issued, with_key=False), fmt, tmp_path / "out", password=PASSWORD)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_missing_parent_directory(fmt: ExportFormat, issued: Issued, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match=re.escape(f"directory {missing} does not exist")):
        write_export(_bundle(issued), fmt, missing / "out", password=PASSWORD)
    assert not missing.exists()


def test_pem_target_that_is_a_file(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "afile"
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="needs a directory"):
        write_export(_bundle(issued), ExportFormat.PEM, out)
    assert out.read_bytes() == b"keep me"


def test_file_target_that_is_a_directory(issued: Issued, tmp_path: Path) -> None:
    out = tmp_path / "adir"
    out.mkdir()
    with pytest.raises(UsageError, match="it is a directory"):
        write_export(_bundle(issued), ExportFormat.FULLCHAIN, out)
    assert list(out.iterdir()) == []
    assert _leftovers(tmp_path) == []


def test_failed_pem_export_leaves_nothing_behind(issued: Issued, tmp_path: Path) -> None:
    # privkey.pem is a directory, so the last file cannot be written: none may be.
    out = tmp_path / "live"
    out.mkdir()
    (out / "privkey.pem").mkdir()
    (out / "cert.pem").write_bytes(b"old cert")
    with pytest.raises(UsageError, match=r"privkey\.pem: it is a directory"):
        write_export(_bundle(issued), ExportFormat.PEM, out)
    assert sorted(p.name for p in out.iterdir()) == ["cert.pem", "privkey.pem"]
    assert (out / "cert.pem").read_bytes() == b"old cert"


def test_mismatched_key_is_refused(issued: Issued, issued_rsa: Issued, tmp_path: Path) -> None:
    bundle = ExportBundle(
        cert_pem=issued.leaf.public_bytes(PEM),
        chain_pem=b"",
        key_pem=private_key_to_pem(issued_rsa.key),
        alias="example.com",
    )
    out = tmp_path / "c.p12"
    with pytest.raises(UsageError, match="does not match"):
        write_export(bundle, ExportFormat.PKCS12, out, password=PASSWORD)
    assert list(tmp_path.iterdir()) == []


def test_bad_bundle_pem(issued: Issued, tmp_path: Path) -> None:
    two = issued.leaf.public_bytes(PEM) + issued.intermediate.public_bytes(PEM)
    with pytest.raises(UsageError, match="holds 2 certificates"):
        write_export(ExportBundle(two, b"", None, "x"), ExportFormat.DER, tmp_path / "c.der")
    with pytest.raises(UsageError, match="not a PEM certificate"):
        write_export(ExportBundle(b"junk", b"", None, "x"), ExportFormat.DER, tmp_path / "c.der")
    assert list(tmp_path.iterdir()) == []


def test_parse_format() -> None:
    assert ExportFormat.parse(" PKCS12 ") is ExportFormat.PKCS12
    with pytest.raises(UsageError, match="pem, fullchain, combined, der, pkcs12, jks"):
        ExportFormat.parse("pfx")
