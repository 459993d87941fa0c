"""The master key is never silently replaced: a store that holds sealed secrets opens
only with the key they were sealed with (services/master_key.py), on a real SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.errors import ConfigError, UsageError
from certbroker.domain.models import AccountStatus
from certbroker.services.master_key import CHECK_SETTING, open_sealer
from certbroker.store.db import make_engine, migrate
from certbroker.store.repository import Repository

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _store(tmp_path: Path) -> Repository:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    return Repository(engine)


def _open(data: Path, repo: Repository, env: str = "") -> Sealer:
    return open_sealer(data, env, repo, lambda: NOW)


def _seal_an_account_key(repo: Repository, sealer: Sealer) -> None:
    repo.add_account(
        name="a", directory_url="https://ca/dir", ca_bundle=None, emails=[],
        key_type="ec-p256", key_sealed=sealer.seal(b"the account key"), uri="https://ca/a/1",
        status=AccountStatus.VALID, terms_of_service=None, eab_kid=None, now=NOW,
    )  # fmt: skip


def test_an_empty_store_gets_a_key_and_opens_with_it_again(tmp_path: Path) -> None:
    repo, data = _store(tmp_path), tmp_path / "data"
    first = _open(data, repo)
    assert (data / "master.key").exists()
    assert repo.get_setting(CHECK_SETTING) is not None
    _seal_an_account_key(repo, first)
    again = _open(data, repo)
    assert again.unseal(repo.account_key_sealed(1)) == b"the account key"


def test_a_missing_key_is_refused_while_secrets_are_stored_and_none_is_made(
    tmp_path: Path,
) -> None:
    repo, data = _store(tmp_path), tmp_path / "data"
    _seal_an_account_key(repo, _open(data, repo))
    (data / "master.key").unlink()
    with pytest.raises(ConfigError) as refused:
        _open(data, repo)
    message = str(refused.value)
    assert "master.key" in message and "backup" in message
    assert "CERTBROKER_MASTER_KEY" in message
    assert not (data / "master.key").exists()


def test_another_key_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    repo, data = _store(tmp_path), tmp_path / "data"
    _seal_an_account_key(repo, _open(data, repo))
    check = repo.get_setting(CHECK_SETTING)
    with pytest.raises(ConfigError, match="is not the one this store's secrets"):
        _open(data, repo, env=new_master_key().decode())
    assert repo.get_setting(CHECK_SETTING) == check


def test_a_store_sealed_before_it_kept_a_check_is_checked_by_its_secrets(
    tmp_path: Path,
) -> None:
    """A store from before the check value: the key must open a stored secret."""
    repo, data = _store(tmp_path), tmp_path / "data"
    right = new_master_key()
    _seal_an_account_key(repo, Sealer(right))
    with pytest.raises(ConfigError, match="is not the one"):
        _open(data, repo, env=new_master_key().decode())
    assert repo.get_setting(CHECK_SETTING) is None
    _open(data, repo, env=right.decode())
    assert repo.get_setting(CHECK_SETTING) is not None


def test_a_store_without_secrets_may_change_its_key(tmp_path: Path) -> None:
    repo, data = _store(tmp_path), tmp_path / "data"
    _open(data, repo)
    (data / "master.key").unlink()
    _open(data, repo)  # nothing sealed yet: a new key harms nothing
    assert (data / "master.key").exists()


def test_a_push_targets_ssh_identity_alone_is_checked_too(tmp_path: Path) -> None:
    """A store from before the check value whose only secret is a push target's SSH
    identity: another key is refused, not taken."""
    from certbroker.domain.targets import SSH, SshHost, TargetFiles

    repo, data = _store(tmp_path), tmp_path / "data"
    right = new_master_key()
    repo.add_target(
        name="edge", kind=SSH, hosts=(SshHost("deploy", "edge.example.com"),), path="/etc/ssl",
        files=TargetFiles(cert_file="fullchain.pem", key_file="privkey.pem"), reload=None,
        verify=None, known_hosts="edge.example.com ssh-ed25519 AAAA",
        identity_sealed=Sealer(right).seal(b"the identity"), pkcs12_password_sealed=None,
        now=NOW,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="is not the one"):
        _open(data, repo, env=new_master_key().decode())
    _open(data, repo, env=right.decode())


def test_nodes_given_the_next_key_go_on_through_a_rotation_and_others_are_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several nodes with CERTBROKER_MASTER_KEY (no key files): one given the next key
    beforehand opens and seals through the rotation; one not given it is refused to seal,
    saying what to do, rather than sealing a secret the others cannot open."""
    from certbroker.services.master_key import rotate

    monkeypatch.setattr(Sealer, "CURRENT_TTL", 0.0)
    repo, data = _store(tmp_path), tmp_path / "data"
    old, new = new_master_key(), new_master_key()
    first = open_sealer(data, old.decode(), repo, lambda: NOW)
    _seal_an_account_key(repo, first)
    ready = open_sealer(data, old.decode(), repo, lambda: NOW, new.decode())
    unready = open_sealer(data, old.decode(), repo, lambda: NOW)
    assert ready.seal(b"x") and first.opens_with(old, ready.seal(b"before"))

    rotator = open_sealer(data, old.decode(), repo, lambda: NOW, new.decode())
    assert rotate(repo, rotator, new, lambda: NOW, key_dir=None, settle=0) == 1
    sealed = repo.account_key_sealed(1)
    assert rotator.opens_with(new, sealed) and not rotator.opens_with(old, sealed)
    assert ready.unseal(sealed) == b"the account key"
    assert ready.opens_with(new, ready.seal(b"after"))  # seals with the current key now
    unready.CURRENT_TTL = 60.0  # type: ignore[misc]  # a refusal is not remembered as an answer
    for _ in range(2):  # and again: it never falls back to sealing with the old key
        with pytest.raises(ConfigError, match="CERTBROKER_MASTER_KEY_NEXT"):
            unready.seal(b"after")
    # A node restarted with the new key alone opens the store; one with the old is refused.
    assert open_sealer(data, new.decode(), repo, lambda: NOW).unseal(sealed) == b"the account key"
    with pytest.raises(ConfigError, match="not the one"):
        open_sealer(data, old.decode(), repo, lambda: NOW)
    with pytest.raises(UsageError, match="current one"):
        rotate(repo, rotator, new, lambda: NOW, key_dir=None, settle=0)
