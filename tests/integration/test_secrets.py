"""Keys never appear in clear: not in debug logs, not in the data directory."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbroker.crypto.keys import load_private_key
from certbroker.crypto.sealing import new_master_key
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def fingerprints_of(key_pem: bytes) -> list[bytes]:
    """Byte strings that would betray the key: PEM body, DER, and the raw secret numbers
    in the encodings logs and JWKs use (hex, base64, base64url)."""
    key = load_private_key(key_pem)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    body = b"".join(key_pem.strip().splitlines()[1:-1])
    if isinstance(key, ec.EllipticCurvePrivateKey):
        secret = key.private_numbers().private_value
        size = (key.curve.key_size + 7) // 8
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        secret = key.private_numbers().d
        size = (key.key_size + 7) // 8
    raw = secret.to_bytes(size, "big")
    return [
        der,
        body[:64],
        raw,
        raw.hex().encode(),
        _b64url(raw),
        base64.b64encode(raw),
    ]


def _scan(haystack: bytes, needles: list[bytes], where: str) -> None:
    assert b"PRIVATE KEY-----" not in haystack, f"a PEM private key in {where}"
    for needle in needles:
        assert needle not in haystack, f"key material in {where}"


@pytest.fixture
def nonce_heavy_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    """Pebble rejecting half of all nonces: the broker must retry badNonce itself."""
    server = start_pebble(
        tmp_path_factory.mktemp("pebble-nonce"), http_port=free_port(), nonce_reject=50
    )
    try:
        yield server
    finally:
        server.stop()


def test_debug_logs_and_data_dir_hold_no_key_in_clear(cli: Cli, tmp_path: Path) -> None:
    master = new_master_key().decode()
    cli.env.update({"CERTBROKER_LOG_LEVEL": "debug", "CERTBROKER_MASTER_KEY": master})
    cli.register("main", "--key-type", "rsa2048")
    cli("cert", "request", "secret.example.com", "www.secret.example.com", "--wait")
    cli("cert", "request", "secret2.example.com", "--key-type", "rsa3072", "--wait")
    cli("cert", "revoke", "2")
    cli("account", "rollover", "main")
    logs = "".join(p.stdout + p.stderr for p in cli.history).encode()
    assert b"Sending POST request" in logs  # the ACME exchange really was logged
    assert b"certbroker.issuance" in logs or b"certbroker.acme" in logs or b"DEBUG" in logs

    exported = tmp_path / "exports"
    exported.mkdir()
    needles: list[bytes] = []
    for cert_id in ("1", "2"):
        out = exported / cert_id
        cli("cert", "export", cert_id, "--format", "pem", "--out", str(out))
        needles += fingerprints_of((out / "privkey.pem").read_bytes())
    account_key = exported / "account.pem"
    cli("account", "export-key", "main", "--out", str(account_key))
    needles += fingerprints_of(account_key.read_bytes())
    needles.append(master.encode())

    _scan(logs, needles, "the logs")
    files = [p for p in cli.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "certbroker.db" for p in files)
    for path in files:
        _scan(path.read_bytes(), needles, str(path))


def test_badnonce_storm_at_50_percent(nonce_heavy_pebble: PebbleServer, tmp_path: Path) -> None:
    cli = make_cli(tmp_path / "data", nonce_heavy_pebble)
    cli.register()
    for n in range(3):
        details = cli.json("cert", "request", f"nonce{n}.example.com", "--wait")
        assert details["status"] == "valid"
    cli("cert", "revoke", "1")
    assert cli.json("cert", "show", "1")["status"] == "revoked"
