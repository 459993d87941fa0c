"""An id is never given to a new object (issue 24, finding 1). SQLite hands out the
highest rowid plus one unless a table says AUTOINCREMENT, so deleting the newest
certificate gave its id to the next one, and an agent subscribed to the deleted one
received the new one with its key. Every table with an `id` now says AUTOINCREMENT
(migration 0027 rebuilds the tables of an older store, keeping every id and every row
that points at one)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alembic import command
from sqlalchemy import Engine, Integer, text

from certbroker.domain.clients import ClientPolicy
from certbroker.domain.models import AccountStatus
from certbroker.domain.targets import TargetFiles
from certbroker.store.copy import copy_store
from certbroker.store.db import HEAD_REVISION, current_revision, make_engine, migrate
from certbroker.store.repository import Repository
from certbroker.store.schema import metadata
from tests.unit.conftest import NOW, new_certificate
from tests.unit.test_migrations import alembic_config


def id_tables() -> list[str]:
    return sorted(
        t.name
        for t in metadata.sorted_tables
        if "id" in t.c and t.c.id.primary_key and isinstance(t.c.id.type, Integer)
    )


def test_a_deleted_certificates_id_is_not_given_to_the_next(repo: Repository) -> None:
    first, _ = repo.create_certificate(new_certificate("old.example.com"), NOW, None, NOW)
    repo.delete_certificate(first.id, NOW)
    second, _ = repo.create_certificate(new_certificate("new.example.com"), NOW, None, NOW)
    assert second.id > first.id


def test_a_deleted_clients_id_is_not_given_to_the_next(repo: Repository) -> None:
    first = _client(repo, "gw-old")
    repo.delete_client(first)
    assert _client(repo, "gw-new") > first


def _rows(repo: Repository, table: str, column: str, value: int) -> int:
    with repo.engine.connect() as conn:
        query = text(f"SELECT count(*) FROM {table} WHERE {column} = :v")  # noqa: S608
        return int(conn.execute(query, {"v": value}).scalar_one())


def _point_at(repo: Repository, cert_id: int, client_id: int) -> None:
    """What points at a certificate and a client: an agent's installation, a device's
    request, an expiry warning sent, a client's acknowledged challenge token."""
    with repo.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO installations (client_id, certificate_id, key_mode, created_at) "
                "VALUES (:cl, :c, 'broker', :t)"
            ),
            {"cl": client_id, "c": cert_id, "t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO device_requests (client_id, names, challenge, csr_pem, state, "
                "certificate_id, created_at) VALUES (:cl, '[]', 'http-01', 'x', 'issued', "
                ":c, :t)"
            ),
            {"cl": client_id, "c": cert_id, "t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO expiry_warnings (certificate_id, not_after, threshold, at) "
                "VALUES (:c, :t, 30, :t)"
            ),
            {"c": cert_id, "t": NOW},
        )
        conn.execute(
            text("INSERT INTO challenge_acks (token, client_id, at) VALUES ('tok', :cl, :t)"),
            {"cl": client_id, "t": NOW},
        )


def _client(repo: Repository, name: str) -> int:
    return repo.add_client(
        name=name, token_hash=f"h-{name}", token_prefix=name[:4], allow=["*.example.com"],
        wildcard=False, policy=ClientPolicy.DENY, now=NOW,
    ).id  # fmt: skip


def test_what_points_at_a_deleted_certificate_goes_with_it(repo: Repository) -> None:
    cert, _ = repo.create_certificate(new_certificate(), NOW, None, NOW)
    client = _client(repo, "gw")
    _point_at(repo, cert.id, client)
    repo.delete_certificate(cert.id, NOW)
    for table in ("installations", "device_requests", "expiry_warnings"):
        assert _rows(repo, table, "certificate_id", cert.id) == 0, table
    assert _rows(repo, "events", "certificate_id", cert.id) == 1  # "deleted (names)"


def test_what_points_at_a_deleted_client_goes_with_it(repo: Repository) -> None:
    """Its certificates stay (their keys and history) but are no one's and disabled:
    nothing renews a certificate for a client that is gone."""
    client = _client(repo, "gw")
    request = dataclasses.replace(new_certificate(), client_id=client)
    cert, _ = repo.create_certificate(request, NOW, None, NOW)
    _point_at(repo, cert.id, client)
    repo.delete_client(client)
    for table in ("installations", "device_requests", "challenge_acks"):
        assert _rows(repo, table, "client_id", client) == 0, table
    kept = repo.get_certificate(cert.id)
    assert kept.client_id is None and kept.disabled


def test_every_table_with_an_id_says_autoincrement(repo: Repository) -> None:
    with repo.engine.connect() as conn:
        ddl = dict(
            conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type='table'")).all()
        )
    missing = [name for name in id_tables() if "AUTOINCREMENT" not in ddl[name]]
    assert missing == []


def test_an_older_store_keeps_every_id_row_and_index(tmp_path: Path) -> None:
    """Rebuilt table by table: ids (gaps too), rows that point at them (a target
    attachment would go with its certificate if a drop cascaded), indexes and triggers."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0026")
    repo = Repository(engine)
    before_indexes = indexes_and_triggers(engine)
    repo.add_account(
        name="a", directory_url="https://ca/dir", ca_bundle=None, emails=[], key_type="ec-p256",
        key_sealed=b"s", uri="https://ca/acct/1", status=AccountStatus.VALID, terms_of_service=None,
        eab_kid=None, now=NOW,
    )  # fmt: skip
    ids = [repo.create_certificate(new_certificate(f"c{i}.example.com"), NOW, None, NOW)[0].id
           for i in range(3)]  # fmt: skip
    repo.delete_certificate(ids[1], NOW)  # a gap
    target = repo.add_target(
        name="t", kind="local", hosts=[], path="/tmp/x", files=TargetFiles(), reload=None,
        verify=None, known_hosts=None, identity_sealed=None, pkcs12_password_sealed=None,
        now=NOW,
    )  # fmt: skip
    repo.attach_target(ids[2], target.id, NOW)
    migrate(engine)
    assert current_revision(engine) == HEAD_REVISION
    after = Repository(engine)
    assert [c.id for c in after.list_certificates(now=NOW)] == [ids[0], ids[2]]
    assert [t.name for t in after.targets_of(ids[2])] == ["t"]
    after_indexes = indexes_and_triggers(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    assert after_indexes == before_indexes
    repo.delete_certificate(ids[2], NOW)
    newest, _ = after.create_certificate(new_certificate("d.example.com"), NOW, None, NOW)
    assert newest.id > ids[2]


def indexes_and_triggers(engine: Engine) -> list[tuple[str, str]]:
    query = (
        "SELECT name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL"
    )
    with engine.connect() as conn:
        return sorted((str(name), str(sql)) for name, sql in conn.execute(text(query)))


def test_a_copy_of_the_store_does_not_give_a_deleted_id_again(
    repo: Repository, tmp_path: Path
) -> None:
    """A backup or `db copy` carries on where the store's ids were, not after the largest
    id it copied: the newest certificate deleted before the copy stays gone after it."""
    kept, _ = repo.create_certificate(new_certificate("kept.example.com"), NOW, None, NOW)
    gone, _ = repo.create_certificate(new_certificate("gone.example.com"), NOW, None, NOW)
    repo.delete_certificate(gone.id, NOW)
    copy = make_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    copy_store(repo.engine, copy)
    newest, _ = Repository(copy).create_certificate(new_certificate(), NOW, None, NOW)
    assert newest.id > gone.id > kept.id
