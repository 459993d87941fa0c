"""A store made by an older certbroker is brought up to date and keeps its data."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from certbroker.domain.models import OrderPurpose
from certbroker.store.db import HEAD_REVISION, current_revision, make_engine, migrate
from certbroker.store.repository import Repository


def test_a_0001_store_upgrades_and_keeps_its_orders(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", "certbroker.store:migrations")
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
