"""Every export format, written by the CLI and read back with cryptography and pyjks."""

from __future__ import annotations

import stat
from pathlib import Path

import jks
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certbroker.crypto.keys import key_matches_certificate
from tests.conftest import Cli


@pytest.fixture
def issued(cli: Cli) -> Cli:
    cli.register()
    cli("cert", "request", "export.example.com", "www.export.example.com", "--wait")
    return cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_format_reads_back(issued: Cli, tmp_path: Path) -> None:
    cli = issued
    pem_dir = tmp_path / "pem"
    cli("cert", "export", "1", "--format", "pem", "--out", str(pem_dir))
    leaf = x509.load_pem_x509_certificate((pem_dir / "cert.pem").read_bytes())
    chain = x509.load_pem_x509_certificates((pem_dir / "chain.pem").read_bytes())
    full = x509.load_pem_x509_certificates((pem_dir / "fullchain.pem").read_bytes())
    key = serialization.load_pem_private_key((pem_dir / "privkey.pem").read_bytes(), None)
    assert full == [leaf, *chain] and chain
    assert key_matches_certificate(key, leaf)  # type: ignore[arg-type]

    fullchain = tmp_path / "fullchain.pem"
    cli("cert", "export", "1", "--format", "fullchain", "--out", str(fullchain))
    assert x509.load_pem_x509_certificates(fullchain.read_bytes()) == full
    assert b"PRIVATE KEY" not in fullchain.read_bytes()
    assert _mode(fullchain) == 0o644

    combined = tmp_path / "haproxy.pem"
    cli("cert", "export", "1", "--format", "combined", "--out", str(combined))
    data = combined.read_bytes()
    assert data.index(b"PRIVATE KEY") < data.index(b"CERTIFICATE")
    assert x509.load_pem_x509_certificates(data) == full
    assert _mode(combined) == 0o600

    der = tmp_path / "cert.der"
    cli("cert", "export", "1", "--format", "der", "--out", str(der))
    assert x509.load_der_x509_certificate(der.read_bytes()) == leaf

    p12 = tmp_path / "cert.p12"
    cli("cert", "export", "1", "--format", "pkcs12", "--out", str(p12), "--password", "s3cret")
    p12_key, p12_cert, p12_extra = pkcs12.load_key_and_certificates(p12.read_bytes(), b"s3cret")
    assert p12_cert == leaf and p12_extra == chain
    assert p12_key is not None and key_matches_certificate(p12_key, leaf)  # type: ignore[arg-type]
    assert _mode(p12) == 0o600
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(p12.read_bytes(), b"wrong")

    pw_file = tmp_path / "pw"
    pw_file.write_text("jks-pass\n")
    keystore = tmp_path / "cert.jks"
    cli(
        "cert",
        "export",
        "1",
        "--format",
        "jks",
        "--out",
        str(keystore),
        "--password-file",
        str(pw_file),
    )
    ks = jks.KeyStore.load(str(keystore), "jks-pass")
    (entry,) = ks.private_keys.values()
    assert x509.load_der_x509_certificate(entry.cert_chain[0][1]) == leaf
    assert len(entry.cert_chain) == 1 + len(chain)
    assert _mode(keystore) == 0o600


def test_password_formats_need_a_password(issued: Cli, tmp_path: Path) -> None:
    for fmt in ("pkcs12", "jks"):
        out = tmp_path / f"x.{fmt}"
        result = issued("cert", "export", "1", "--format", fmt, "--out", str(out), check=False)
        assert result.returncode == 2
        assert "password" in result.stderr
        assert not out.exists()


def test_unknown_format_and_missing_directory(issued: Cli, tmp_path: Path) -> None:
    bad = issued(
        "cert", "export", "1", "--format", "pfx", "--out", str(tmp_path / "x"), check=False
    )
    assert bad.returncode == 2 and "unknown --format 'pfx'" in bad.stderr
    nowhere = tmp_path / "missing" / "x.pem"
    bad = issued("cert", "export", "1", "--format", "fullchain", "--out", str(nowhere), check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
