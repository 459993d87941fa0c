"""What certbroker does with a store it must not damage: a lost master key is refused,
never replaced, and a file that is no certbroker store gets one line saying so. Each
command runs as a separate process on its own data directory."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import subprocess

from tests.conftest import Cli


def _seal_a_secret(cli: Cli) -> None:
    """A DNS account: its TSIG secret is sealed with the master key (no network needed)."""
    cli(
        "dns", "add", "bind", "--provider", "rfc2136", "--server", "127.0.0.1:5353",
        "--tsig-key-name", "certbroker-key",
        env={"CERTBROKER_DNS_TSIG_SECRET": base64.b64encode(secrets.token_bytes(32)).decode()},
    )  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """A usage error (exit 2) said in one line, without a traceback or SQLAlchemy's link."""
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "sqlalche.me" not in proc.stderr
    return proc.stderr


def test_a_deleted_master_key_is_refused_not_replaced(offline_cli: Cli) -> None:
    _seal_a_secret(offline_cli)
    key_file = offline_cli.data_dir / "master.key"
    saved = key_file.read_bytes()
    key_file.unlink()

    refused = _one_line_error(offline_cli("dns", "list", check=False))
    assert "no master key" in refused and "master.key" in refused
    assert "backup" in refused and "CERTBROKER_MASTER_KEY" in refused
    assert not key_file.exists(), "a new master key was made for a store sealed with another"

    other = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    wrong = offline_cli("dns", "list", check=False, env={"CERTBROKER_MASTER_KEY": other})
    assert "is not the one this store's secrets are sealed with" in _one_line_error(wrong)

    key_file.write_bytes(saved)  # restored from the backup: everything is readable again
    assert "bind" in offline_cli("dns", "show", "bind").stdout


def test_a_file_that_is_no_database_is_named(offline_cli: Cli) -> None:
    offline_cli.data_dir.mkdir(parents=True)
    (offline_cli.data_dir / "certbroker.db").write_bytes(b"these are not the bytes of SQLite\n")
    refused = _one_line_error(offline_cli("cert", "list", check=False))
    assert "is not a certbroker store (file is not a database)" in refused
    assert not (offline_cli.data_dir / "master.key").exists()


def test_a_database_of_something_else_is_not_migrated(offline_cli: Cli) -> None:
    offline_cli.data_dir.mkdir(parents=True)
    path = offline_cli.data_dir / "certbroker.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    refused = _one_line_error(offline_cli("cert", "list", check=False))
    assert "holds other tables (invoices) and no certbroker schema" in refused
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"invoices"}, "certbroker created its tables in someone else's database"


def test_a_schema_from_a_newer_certbroker_is_refused(offline_cli: Cli) -> None:
    offline_cli("cert", "list")
    with sqlite3.connect(offline_cli.data_dir / "certbroker.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    refused = _one_line_error(offline_cli("cert", "list", check=False))
    assert "schema revision 0099" in refused and "newer certbroker" in refused
