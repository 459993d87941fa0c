"""`certbroker rotate-master-key` while `serve` runs on the store: every secret is sealed
again with the new key, `serve` goes on (it seals the next certificate's key with the new
one and opens the re-sealed ones), and the old key opens nothing any more."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken

from certbroker.crypto.keys import key_matches_certificate, load_private_key
from certbroker.store.sealed import SEALED
from tests.conftest import make_cli
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, stop_serve, wait_until


def sealed_values(db: Path) -> list[bytes]:
    """Every sealed secret in the store file, read with plain SQL."""
    found = []
    with sqlite3.connect(db) as conn:
        for table, column in SEALED:
            sql = f"SELECT {column} FROM {table.name} WHERE {column} IS NOT NULL"  # noqa: S608
            found += [bytes(row[0]) for row in conn.execute(sql)]
        row = conn.execute(
            "SELECT value FROM runtime_settings WHERE name = 'mail-settings'"
        ).fetchone()
    found.append(base64.b64decode(json.loads(row[0])["password"]))
    return found


def opens(key: bytes, sealed: bytes) -> bool:
    try:
        Fernet(key).decrypt(sealed)
    except InvalidToken:
        return False
    return True


def test_rotating_the_master_key_while_serving_reseals_everything(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    data = tmp_path / "data"
    cli = make_cli(data, pebble)
    cli.register()
    first = cli.json("cert", "request", "rotate-1.example.com", "--wait")
    cli("notify", "set", "--host", "mail.example.com", "--password-stdin", input="smtp-pw\n")
    token = cli("token", "create", "--name", "ops", "--role", "admin").stdout.split()[-1]
    old = (data / "master.key").read_bytes().strip()
    before = sealed_values(data / "certbroker.db")
    assert len(before) >= 3 and all(opens(old, v) for v in before)

    serve = start_api(cli)
    try:
        rotated = cli("rotate-master-key")
        assert "re-sealed" in rotated.stdout and "master.key.previous" in rotated.stdout
        new = (data / "master.key").read_bytes().strip()
        assert new != old and (data / "master.key.previous").read_bytes().strip() == old
        assert (data / "master.key").stat().st_mode & 0o777 == 0o600
        assert not (data / "master.key.next").exists()

        # serve, started with the old key, goes on: a new certificate (its key sealed
        # now), and the re-sealed key of the first one exported through it.
        api = httpx.Client(base_url=api_url(cli), trust_env=False, timeout=60,
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        second = api.post("/api/v1/certificates", json={"names": ["rotate-2.example.com"]})
        assert second.status_code == 202, second.text
        second_id = second.json()["id"]

        def status() -> str:
            return str(api.get(f"/api/v1/certificates/{second_id}").json()["status"])

        wait_until("the certificate ordered after the rotation", lambda: status() == "valid",
                   serve=serve)  # fmt: skip
        exported = api.post(f"/api/v1/certificates/{first['id']}/export",
                            json={"format": "combined"})  # fmt: skip
        assert exported.status_code == 200, exported.text
        assert b"PRIVATE KEY" in exported.content
    finally:
        stop_serve(serve)

    after = sealed_values(data / "certbroker.db")
    assert len(after) == len(before) + 1  # the second certificate's key
    assert all(opens(new, v) and not opens(old, v) for v in after)
    for cert_id in (first["id"], second_id):
        out = tmp_path / f"export-{cert_id}"
        cli("cert", "export", str(cert_id), "--format", "pem", "--out", str(out))
        leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
        assert key_matches_certificate(load_private_key((out / "privkey.pem").read_bytes()), leaf)
    [rotation] = [e for e in cli.json("audit") if e["action"] == "master-key.rotate"]
    assert rotation["actor_kind"] == "cli" and int(rotation["details"]["values_reencrypted"]) >= 3
    refused = cli("cert", "list", env={"CERTBROKER_MASTER_KEY": old.decode()}, check=False)
    assert refused.returncode == 2 and "not the one" in refused.stderr
