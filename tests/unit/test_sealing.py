"""The master key and sealing of secrets at rest."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from certbroker.crypto.sealing import Sealer, create_master_key, new_master_key, read_master_key
from certbroker.domain.errors import CertbrokerError, ConfigError


def test_master_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    assert read_master_key(tmp_path / "data") is None
    first = create_master_key(tmp_path / "data")
    second = read_master_key(tmp_path / "data")
    assert first == second
    mode = stat.S_IMODE((tmp_path / "data" / "master.key").stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["master.key"]


def test_environment_key_wins_and_no_file_is_written(tmp_path: Path) -> None:
    key = new_master_key()
    assert read_master_key(tmp_path, key.decode()) == key
    assert not (tmp_path / "master.key").exists()


def test_seal_round_trip_and_ciphertext_hides_the_secret() -> None:
    sealer = Sealer(new_master_key())
    secret = b"-----BEGIN PRIVATE KEY-----\nabc\n"
    sealed = sealer.seal(secret)
    assert secret not in sealed
    assert sealer.unseal(sealed) == secret


def test_wrong_master_key_is_reported() -> None:
    sealed = Sealer(new_master_key()).seal(b"x")
    with pytest.raises(CertbrokerError, match="master key the store was created with"):
        Sealer(new_master_key()).unseal(sealed)


def test_malformed_master_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="new-master-key"):
        Sealer(b"too-short")
