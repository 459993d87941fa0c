"""Moving a store: `certbroker backup` while `serve` runs, the store wiped, `certbroker
restore`; `certbroker db copy` of a populated SQLite store into PostgreSQL, where a node
renews what was copied. Certificates come from Pebble, validating over HTTP-01 for real."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from sqlalchemy import text

from certbroker.crypto.keys import key_matches_certificate, load_private_key
from certbroker.store.db import make_engine
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.serve import start_api, stop_serve


def key_opens_with_its_certificate(cli: Cli, cert_id: int, out: Path) -> str:
    """Exports the certificate and its key (so the key unseals) and returns its serial."""
    cli("cert", "export", str(cert_id), "--format", "pem", "--out", str(out))
    leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    key = load_private_key((out / "privkey.pem").read_bytes())
    assert key_matches_certificate(key, leaf)
    assert stat.S_IMODE((out / "privkey.pem").stat().st_mode) == 0o600
    return format(leaf.serial_number, "x")


def test_a_backup_taken_while_serving_restores_into_a_wiped_store(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    cli = make_cli(tmp_path / "data", pebble)
    cli.register()
    cert = cli.json("cert", "request", "backup.example.com", "--wait")
    serial = key_opens_with_its_certificate(cli, cert["id"], tmp_path / "before")
    serve = start_api(cli)
    try:
        # Written while serve holds the store: one consistent snapshot, for the owner only.
        made = cli("backup", "--out", str(tmp_path / "backup.db"))
        assert "backed up 1 certificates and 1 accounts" in made.stdout
        assert stat.S_IMODE((tmp_path / "backup.db").stat().st_mode) == 0o600
        again = cli("backup", "--out", str(tmp_path / "backup.db"), check=False)
        assert again.returncode == 2 and "exists already" in again.stderr
        full = cli("restore", str(tmp_path / "backup.db"), check=False)
        assert full.returncode == 2 and "is not empty" in full.stderr  # nothing overwritten
    finally:
        stop_serve(serve)
    # The store is lost; the master key was kept apart, as docs/operations.md says.
    key = (tmp_path / "data" / "master.key").read_bytes()
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").mkdir(mode=0o700)
    (tmp_path / "data" / "master.key").write_bytes(key)
    (tmp_path / "data" / "master.key").chmod(0o600)
    assert cli.json("cert", "list") == []  # a new, empty store

    restored = cli("restore", str(tmp_path / "backup.db"))
    assert "restored 1 certificates and 1 accounts" in restored.stdout
    [shown] = cli.json("cert", "list")
    assert shown["id"] == cert["id"] and shown["serial"] == serial
    assert key_opens_with_its_certificate(cli, cert["id"], tmp_path / "after") == serial
    # The restored store goes on: its account orders again, and the IDs go on after.
    newer = cli.json("cert", "request", "after-restore.example.com", "--wait")
    assert newer["id"] > cert["id"] and newer["status"] == "valid"


def test_a_sqlite_store_copied_into_postgresql_is_renewed_by_a_node_there(
    tmp_path: Path, pebble: PebbleServer, postgres: PostgresServer
) -> None:
    single = make_cli(tmp_path / "single", pebble)
    single.register()
    first = single.json("cert", "request", "copied-1.example.com", "--wait")
    single.json("cert", "request", "copied-2.example.com", "--wait")
    url = postgres.new_database()
    refused = single("db", "copy", "--from", str(tmp_path / "nowhere.db"), "--to", url,
                     check=False)  # fmt: skip
    assert refused.returncode == 2 and "schema revision none" in refused.stderr
    copied = single("db", "copy", "--from", str(tmp_path / "single" / "certbroker.db"), "--to", url)
    assert "copied" in copied.stdout and "into postgresql+psycopg://" in copied.stdout
    again = single("db", "copy", "--from", str(tmp_path / "single" / "certbroker.db"),
                   "--to", url, check=False)  # fmt: skip
    assert again.returncode == 2 and "is not empty" in again.stderr

    # A node on PostgreSQL with the same master key: it sees and renews what was copied.
    node = make_cli(tmp_path / "node", pebble)
    node.env["CERTBROKER_DATABASE_URL"] = url
    node.env["CERTBROKER_MASTER_KEY"] = (tmp_path / "single" / "master.key").read_text().strip()
    listed = node.json("cert", "list")
    assert sorted(c["names"][0] for c in listed) == ["copied-1.example.com", "copied-2.example.com"]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE certificates SET renew_at = now() - interval '1 minute'"))
        node.env["CERTBROKER_SCHEDULER_INTERVAL"] = "1"
        node.env["CERTBROKER_LISTEN"] = f"127.0.0.1:{free_port()}"
        serve = subprocess.Popen(
            [sys.executable, "-m", "certbroker", "serve"], env=node.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while True:
                with engine.begin() as conn:
                    renewed = conn.execute(
                        text(
                            "SELECT count(*) FROM orders WHERE purpose = 'renew' "
                            "AND state = 'valid'"
                        )
                    ).scalar_one()
                if renewed == 2:
                    break
                assert serve.poll() is None and time.monotonic() < deadline, "no renewal"
                time.sleep(0.5)
        finally:
            stop_serve(serve)
        # New rows after the copied ones: PostgreSQL's ID sequences went on past them.
        newer = node.json("cert", "request", "after-copy.example.com", "--wait")
        assert newer["id"] == max(c["id"] for c in listed) + 1
        shown = node.json("cert", "show", str(first["id"]))
        assert len(shown["history"]) == 1  # renewed there: the copied one in its history
        key_opens_with_its_certificate(node, first["id"], tmp_path / "export")
        # A backup of the PostgreSQL store (its snapshot read REPEATABLE READ) restores
        # into a single machine's SQLite store again.
        made = node("backup", "--out", str(tmp_path / "from-postgresql.db"))
        assert "backed up 3 certificates and 1 accounts" in made.stdout
        back = make_cli(tmp_path / "back", pebble)
        back.env["CERTBROKER_MASTER_KEY"] = node.env["CERTBROKER_MASTER_KEY"]
        back("restore", str(tmp_path / "from-postgresql.db"))
        assert len(back.json("cert", "list")) == 3
        key_opens_with_its_certificate(back, first["id"], tmp_path / "export-back")
    finally:
        engine.dispose()
    assert json.loads(single("cert", "show", str(first["id"]), "--json").stdout)["history"] == []
