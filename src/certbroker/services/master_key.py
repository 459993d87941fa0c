"""The master key is never silently replaced.

The store keeps a check value of the key its secrets are sealed with (crypto/sealing.py
`key_check`). At start the key from CERTBROKER_MASTER_KEY or <data_dir>/master.key must
match it; a missing or different key is refused while the store holds any sealed secret,
naming what to restore, and a key is created only for a store that holds none. So a lost
master.key never turns into a second key under which half the secrets are sealed.
"""

from __future__ import annotations

from pathlib import Path

from certbroker.crypto.sealing import (
    MASTER_KEY_FILE,
    Sealer,
    create_master_key,
    key_check,
    read_master_key,
)
from certbroker.domain.errors import CertbrokerError, ConfigError
from certbroker.services.common import Clock
from certbroker.store.repository import Repository

CHECK_SETTING = "master_key_check"


def open_sealer(data_dir: Path, from_env: str, repo: Repository, clock: Clock) -> Sealer:
    """The sealer of this store's secrets; ConfigError when the key is missing or is not
    the one they were sealed with. On the common path: one query, no key file written."""
    key = read_master_key(data_dir, from_env)
    stored = repo.get_setting(CHECK_SETTING)
    if key is not None and stored == key_check(key):
        return Sealer(key)
    where = "CERTBROKER_MASTER_KEY" if from_env else str(data_dir / MASTER_KEY_FILE)
    secret = repo.a_sealed_secret()
    if key is None:
        if secret is not None:
            raise ConfigError(
                f"no master key: {data_dir / MASTER_KEY_FILE} is missing and "
                "CERTBROKER_MASTER_KEY is not set, but the store holds keys sealed with one. "
                f"Restore {MASTER_KEY_FILE} from your backup into {data_dir}, or set "
                "CERTBROKER_MASTER_KEY to it; a new key could not read them, so none is made"
            )
        key = create_master_key(data_dir)
    sealer = Sealer(key)
    if secret is not None and (stored is not None or not _opens(sealer, secret)):
        raise ConfigError(
            f"the master key in {where} is not the one this store's secrets are sealed "
            f"with. Restore the store's own {MASTER_KEY_FILE} from your backup (or set "
            "CERTBROKER_MASTER_KEY to it); nothing was changed"
        )
    repo.set_setting(CHECK_SETTING, key_check(key), clock())
    return sealer


def _opens(sealer: Sealer, sealed: bytes) -> bool:
    try:
        sealer.unseal(sealed)
    except CertbrokerError:
        return False
    return True
