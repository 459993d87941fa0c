"""The master key is never silently replaced.

The store keeps a check value of the key its secrets are sealed with (crypto/sealing.py
`key_check`). At start the key from CERTBROKER_MASTER_KEY or <data_dir>/master.key must
match it; a missing or different key is refused while the store holds any sealed secret,
naming what to restore, and a key is created only for a store that holds none. So a lost
master.key never turns into a second key under which half the secrets are sealed.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from certbroker.crypto.sealing import (
    MASTER_KEY_FILE,
    NEXT_KEY_FILE,
    PREVIOUS_KEY_FILE,
    Sealer,
    create_master_key,
    key_check,
    new_master_key,
    read_key_files,
    read_master_key,
    write_key_file,
)
from certbroker.domain.errors import CertbrokerError, ConfigError, UsageError
from certbroker.services import audit
from certbroker.services.common import Clock, ServiceContext
from certbroker.store.repository import Repository
from certbroker.store.sealed import SEALED

CHECK_SETTING = "master_key_check"
MAIL_SETTING = "mail-settings"  # its SMTP password is sealed (services/notify.py)


def open_sealer(
    data_dir: Path, from_env: str, repo: Repository, clock: Clock, next_key: str = ""
) -> Sealer:
    """The sealer of this store's secrets; ConfigError when the key is missing or is not
    the one they were sealed with. On the common path: one query, no key file written.
    `next_key` (CERTBROKER_MASTER_KEY_NEXT), and where keys come from files, the data
    directory's master.key.next and .previous: keys this process may also open with, and
    seal with once the store names one of them current (a rotation)."""
    key = read_master_key(data_dir, from_env)
    others = [next_key.strip().encode()] if next_key.strip() else []
    if not from_env:
        others += [k for k in read_key_files(data_dir) if k != key and k not in others]
    stored = repo.get_setting(CHECK_SETTING)

    def sealer_for(primary: bytes) -> Sealer:
        return Sealer(primary, others, current=lambda: repo.get_setting(CHECK_SETTING),
                      key_dir=None if from_env else data_dir)  # fmt: skip

    if key is not None and any(stored == key_check(k) for k in (key, *others)):
        return sealer_for(key)
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
    sealer = sealer_for(key)
    if secret is not None and (stored is not None or not _opens(sealer, secret)):
        raise ConfigError(
            f"the master key in {where} is not the one this store's secrets are sealed "
            f"with. Restore the store's own {MASTER_KEY_FILE} from your backup (or set "
            "CERTBROKER_MASTER_KEY to it); nothing was changed"
        )
    repo.set_setting(CHECK_SETTING, key_check(key), clock())
    return sealer


def rotate(
    repo: Repository,
    sealer: Sealer,
    new_key: bytes,
    clock: Clock,
    *,
    key_dir: Path | None,
    settle: float = 2 * Sealer.CURRENT_TTL + 1,
    progress: Callable[[str], None] = lambda _: None,
) -> int:
    """Re-seal every secret of the store with `new_key` while other processes go on.

    The store names the new key current first; after `settle` seconds every process
    seals with it (or, not having it, refuses to seal and says so). Then each sealed
    value that the new key does not open is re-sealed, compare-and-swap, pass after pass
    until one finds nothing left. With keys in files (`key_dir`), the new key is written
    to master.key.next before anything changes, and only at the end becomes master.key
    (the old one master.key.previous), so a crash at any point leaves a key that opens
    every secret. Returns how many secrets were re-sealed."""
    current = sealer.sealing_key()
    if new_key == current or key_check(new_key) == key_check(current):
        raise UsageError("the new master key is the current one; give another")
    Sealer(new_key)  # a malformed key is refused before anything changes
    if key_dir is not None:
        write_key_file(key_dir / NEXT_KEY_FILE, new_key)
    sealer.learn(new_key)
    repo.set_setting(CHECK_SETTING, key_check(new_key), clock())
    progress(f"the store names the new key current; waiting {settle:.0f} s for every process")
    time.sleep(settle)
    total = 0
    for _ in range(5):
        changed = _reseal_pass(repo, sealer, new_key)
        total += changed
        if not changed:
            break
        progress(f"re-sealed {changed} secrets")
    if key_dir is not None:
        os.replace(key_dir / MASTER_KEY_FILE, key_dir / PREVIOUS_KEY_FILE)
        os.replace(key_dir / NEXT_KEY_FILE, key_dir / MASTER_KEY_FILE)
        fd = os.open(key_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return total


def _reseal_pass(repo: Repository, sealer: Sealer, new_key: bytes) -> int:
    changed = 0
    for which in range(len(SEALED)):
        after = 0
        while batch := repo.sealed_values(which, after, 500):
            for row_id, sealed in batch:
                if not sealer.opens_with(new_key, sealed):
                    fresh = sealer.seal_with(new_key, sealer.unseal(sealed))
                    changed += repo.replace_sealed(which, row_id, sealed, fresh)
            after = batch[-1][0]
    stored = repo.get_setting(MAIL_SETTING)
    if stored:
        values = json.loads(stored)
        password = values.get("password")
        if password and not sealer.opens_with(new_key, base64.b64decode(password)):
            plain = sealer.unseal(base64.b64decode(password))
            values["password"] = base64.b64encode(sealer.seal_with(new_key, plain)).decode()
            changed += repo.replace_setting(MAIL_SETTING, stored, json.dumps(values))
    return changed


def _opens(sealer: Sealer, sealed: bytes) -> bool:
    try:
        sealer.unseal(sealed)
    except CertbrokerError:
        return False
    return True


class MasterKeyService:
    """`certbroker rotate-master-key`: the keys of this store's secrets."""

    def __init__(self, ctx: ServiceContext, data_dir: Path, key_from_env: bool) -> None:
        self.ctx = ctx
        self.key_dir = None if key_from_env else data_dir

    def rotate(
        self, new_key: bytes | None, progress: Callable[[str], None] = lambda _: None
    ) -> tuple[int, bool]:
        """Re-seal every secret with `new_key` (None: a new one, where keys live in the
        data directory). Returns how many were re-sealed, and whether the key was made
        here (then it is the data directory's master.key)."""
        made = new_key is None
        if new_key is None:
            if self.key_dir is None:
                raise UsageError(
                    "the master key comes from CERTBROKER_MASTER_KEY, so the new one must "
                    "too: make it (`certbroker config new-master-key > new.key`), give it to "
                    "every node as CERTBROKER_MASTER_KEY_NEXT (a rolling restart), then run "
                    "`certbroker rotate-master-key --new-key-file new.key`"
                )
            new_key = new_master_key()
        count = rotate(self.ctx.repo, self.ctx.sealer, new_key, self.ctx.clock,
                       key_dir=self.key_dir, progress=progress)  # fmt: skip
        audit.record(self.ctx, "master-key.rotate", "store", None,
                     {"values_reencrypted": count, "made_here": made})  # fmt: skip
        return count, made
