"""A store made by an older certbroker is brought up to date and keeps its data; a
current one is left alone without importing Alembic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from certbroker.domain.models import OrderPurpose
from certbroker.store.db import HEAD_REVISION, current_revision, make_engine, migrate
from certbroker.store.repository import Repository


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "certbroker.store:migrations")
    return cfg


def test_a_0001_store_upgrades_and_keeps_its_orders(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (name, directory_url, emails, key_type, key_sealed, "
                "status, created_at, updated_at) VALUES ('a', 'https://ca/dir', '[]', "
                "'ec-p256', x'00', 'valid', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO certificates (names, status, account_id, challenge, key_type, "
                "key_policy, subject, created_at, updated_at) VALUES ('[\"a.example.com\"]', "
                "'pending', 1, 'http-01', 'ec-p256', 'new', '{}', '2026-01-01 00:00:00', "
                "'2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO orders (certificate_id, state, attempts, created_at, updated_at) "
                "VALUES (1, 'queued', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    assert current_revision(engine) == "0001"
    migrate(engine)
    assert current_revision(engine) == HEAD_REVISION
    order = Repository(engine).get_order(1)
    assert order.certificate_id == 1 and order.started_at is None
    assert order.purpose is OrderPurpose.ISSUE  # orders from before renewal existed
    assert Repository(engine).get_certificate(1).names == ("a.example.com",)


def test_head_revision_is_alembics_head() -> None:
    """db.HEAD_REVISION is what lets `migrate` skip Alembic; a migration added without
    moving it would leave every store a revision behind, silently."""
    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD_REVISION]


def test_a_new_store_is_migrated_to_the_head(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == HEAD_REVISION


def test_a_current_store_is_left_alone_without_alembic(tmp_path: Path) -> None:
    database = tmp_path / "current.db"
    migrate(make_engine(f"sqlite:///{database}"))
    code = (
        "import json, sys\n"
        "from certbroker.store.db import current_revision, make_engine, migrate\n"
        f"engine = make_engine({f'sqlite:///{database}'!r})\n"
        "migrate(engine)\n"
        "print(json.dumps([current_revision(engine), 'alembic' in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [HEAD_REVISION, False]


def test_certificates_given_up_before_0012_are_tried_again(tmp_path: Path) -> None:
    """A store from before self-healing: a failed first issuance and a renewal stopped
    after a permanent error both get a next try, so `serve` picks them up."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0011")
    stamp = {"at": "2026-01-01 00:00:00"}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (name, directory_url, emails, key_type, key_sealed, "
                "status, created_at, updated_at) VALUES ('a', 'https://ca/dir', '[]', "
                "'ec-p256', x'00', 'valid', :at, :at)"
            ),
            stamp,
        )
        for status, reason in (("failed", None), ("valid", "stopped"), ("valid", "ari")):
            conn.execute(
                text(
                    "INSERT INTO certificates (names, status, account_id, challenge, key_type, "
                    "key_policy, subject, renewal_reason, created_at, updated_at) VALUES "
                    "('[\"a.example.com\"]', :status, 1, 'http-01', 'ec-p256', 'new', '{}', "
                    ":reason, :at, :at)"
                ),
                {"status": status, "reason": reason} | stamp,
            )
    migrate(engine)
    repo = Repository(engine)
    failed, stopped, fine = (repo.get_certificate(i) for i in (1, 2, 3))
    assert failed.next_try_at is not None and stopped.next_try_at is not None
    assert stopped.renewal_reason is None and not stopped.disabled
    assert fine.next_try_at is None and fine.renewal_reason is not None
