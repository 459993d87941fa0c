"""certbroker on PostgreSQL (a real cluster the tests start: Debian's PostgreSQL binaries,
initdb as an unprivileged user): the same migrations as SQLite, `certbroker db
upgrade|status`, a node refusing a schema older or newer than its code, and the whole
life of a certificate against Pebble with the store on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from certbroker.store.db import HEAD_REVISION, current_revision, make_engine
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.postgres import PostgresServer
from tests.support.smtp import SmtpServer


@pytest.fixture
def pgcli(tmp_path: Path, pebble: PebbleServer, postgres: PostgresServer) -> Cli:
    cli = make_cli(tmp_path / "data", pebble)
    cli.env["CERTBROKER_DATABASE_URL"] = postgres.new_database()
    return cli


def _sql(cli: Cli, statement: str) -> None:
    engine = make_engine(cli.env["CERTBROKER_DATABASE_URL"])
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def test_a_node_waits_for_db_upgrade_and_refuses_a_schema_not_its_own(pgcli: Cli) -> None:
    empty = pgcli("cert", "list", check=False)
    assert empty.returncode == 2
    assert "has schema revision none (an empty database)" in empty.stderr
    assert "run `certbroker db upgrade` once" in empty.stderr
    assert pgcli.json("db", "status") == {
        "store": pgcli.env["CERTBROKER_DATABASE_URL"],
        "revision": None,
        "needed": HEAD_REVISION,
        "current": False,
    }
    out = pgcli("db", "upgrade")
    assert f"schema revision none (empty) -> {HEAD_REVISION}" in out.stdout
    assert "was already at" in pgcli("db", "upgrade").stdout
    assert pgcli("cert", "list").returncode == 0

    _sql(pgcli, "UPDATE alembic_version SET version_num = '0022'")  # an older node's
    older = pgcli("cert", "list", check=False)
    assert older.returncode == 2
    assert "has schema revision 0022; this certbroker needs" in older.stderr
    _sql(pgcli, "UPDATE alembic_version SET version_num = '0099'")  # a newer node's
    newer = pgcli("cert", "list", check=False)
    assert newer.returncode == 2 and "made by a newer certbroker" in newer.stderr
    refused = pgcli("db", "upgrade", check=False)
    assert refused.returncode == 2 and "made by a newer certbroker" in refused.stderr


def test_the_migrations_go_down_and_up_again_on_postgresql(postgres: PostgresServer) -> None:
    engine = make_engine(postgres.new_database())
    cfg = Config()
    cfg.set_main_option("script_location", "certbroker.store:migrations")
    try:
        for target in ("head", "base", "head"):
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                (command.upgrade if target == "head" else command.downgrade)(cfg, target)
        assert current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()


def test_a_certificates_life_with_the_store_on_postgresql(pgcli: Cli) -> None:
    pgcli("db", "upgrade")
    pgcli.register()
    assert "certificate 1 issued" in pgcli("cert", "request", "pg.example.com", "--wait").stdout
    first = pgcli.json("cert", "show", "1")
    pgcli("cert", "renew", "1")
    renewed = pgcli.json("cert", "show", "1")
    assert renewed["serial"] != first["serial"] and len(renewed["history"]) == 1
    pgcli("cert", "export", "1", "--format", "pem", "--out", str(pgcli.data_dir.parent / "x"))
    assert (pgcli.data_dir.parent / "x" / "privkey.pem").stat().st_mode & 0o077 == 0
    pgcli("cert", "revoke", "1", "--reason", "superseded")
    assert pgcli.json("cert", "show", "1")["status"] == "revoked"
    kinds = [e["kind"] for e in pgcli.json("events")]
    assert kinds[:1] == ["issued"] and "renewed" in kinds and "revoked" in kinds

    # The audit log is append-only on PostgreSQL too (a trigger), even for TRUNCATE.
    assert any(e["action"] == "certificate.export-key" for e in pgcli.json("audit"))
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log",
                      "TRUNCATE audit_log"):  # fmt: skip
        with pytest.raises(Exception, match="append-only"):
            _sql(pgcli, statement)


def test_an_expiry_mail_goes_out_once_from_a_postgresql_store(pgcli: Cli, smtp: SmtpServer) -> None:
    smtp.clear()
    pgcli.env.update(smtp.env())
    pgcli("db", "upgrade")
    pgcli.register()
    pgcli("cert", "request", "pg-mail.example.com", "--wait")
    _sql(pgcli, "UPDATE certificates SET not_after = now() + interval '6 days 12 hours'")
    for _ in range(3):
        pgcli("notify", "run")
    ((meta, message),) = smtp.mails()
    assert meta["rcpt_tos"] == ["main@example.com"]
    assert str(message["Subject"]).endswith("pg-mail.example.com expires in 6 day(s)")
