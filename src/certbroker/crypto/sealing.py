"""Encryption of private keys at rest with the broker's master key.

The master key is a Fernet key (AES-128-CBC + HMAC-SHA256). It comes from
CERTBROKER_MASTER_KEY or from <data_dir>/master.key, which is created, with mode 0600,
for an empty store only (services/master_key.py). Creation is atomic, so two processes
starting at once agree on one key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from certbroker.domain.errors import CertbrokerError, ConfigError, NoSpace

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

MASTER_KEY_FILE = "master.key"


def _valid(master_key: bytes) -> bytes:
    try:
        valid = len(base64.urlsafe_b64decode(master_key)) == 32
    except (binascii.Error, ValueError, TypeError):
        valid = False
    if not valid:
        raise ConfigError(
            "the master key is not a valid key (32 url-safe base64 bytes); "
            "generate one with `certbroker config new-master-key`"
        )
    return master_key


class Sealer:
    """Seals and unseals secrets (private keys, DNS credentials) with the master key.

    A process may know more than one key while the master key is rotated
    (services/master_key.py): it opens a secret sealed with any of them, and seals with
    the one the store names as current (`current`: the store's check value, asked at
    most every CURRENT_TTL seconds). Where the keys come from files (`key_dir`), a secret
    no known key opens, or a current key not among them, makes it read the files again:
    `rotate-master-key` on the same machine is picked up by a running `serve`.
    """

    CURRENT_TTL = 5.0

    def __init__(
        self,
        master_key: bytes,
        others: Sequence[bytes] = (),
        *,
        current: Callable[[], str | None] | None = None,
        key_dir: Path | None = None,
    ) -> None:
        # Checked now, as Fernet would; Fernet itself (and the cipher modules it loads)
        # is made on first use, which commands that read no secret (cert list) never pay.
        self._keys = [_valid(master_key)]
        self._keys += [_valid(k) for k in others if k != master_key]
        self._sealing = master_key
        self._current = current
        self._key_dir = key_dir
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._fernets: dict[bytes, Fernet] = {}

    def _fernet(self, key: bytes) -> Fernet:
        made = self._fernets.get(key)
        if made is None:
            from cryptography.fernet import Fernet

            made = self._fernets[key] = Fernet(key)
        return made

    def _reread(self) -> bool:
        """Keys from the files again (a rotation on this machine); True when one is new."""
        if self._key_dir is None:
            return False
        found = [_valid(k) for k in read_key_files(self._key_dir) if k not in self._keys]
        self._keys = self._keys + found  # a new list: other threads may be reading this one
        return bool(found)

    def sealing_key(self) -> bytes:
        """The key new secrets are sealed with: the one the store names as current."""
        if self._current is None:
            return self._sealing
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at < self.CURRENT_TTL:
                return self._sealing
            wanted = self._current()
            if wanted is None:
                self._checked_at = now
                return self._sealing
            for attempt in range(2):
                for key in self._keys:
                    if key_check(key) == wanted:
                        self._sealing, self._checked_at = key, now
                        return key
                if attempt == 0 and not self._reread():
                    break
            # Not remembered: every later seal asks again, and is refused again, until the
            # process is given the key.
            raise ConfigError(
                "the store's secrets are now sealed with a master key this process was not "
                "given (it was rotated); restart it with the new key in "
                "CERTBROKER_MASTER_KEY (or CERTBROKER_MASTER_KEY_NEXT)"
            )

    def learn(self, key: bytes) -> None:
        """One more key this process opens with (and may seal with, once current)."""
        if key not in self._keys:
            self._keys = [*self._keys, _valid(key)]

    def seal(self, secret: bytes) -> bytes:
        return self._fernet(self.sealing_key()).encrypt(secret)

    def seal_with(self, key: bytes, secret: bytes) -> bytes:
        return self._fernet(key).encrypt(secret)

    def opens_with(self, key: bytes, sealed: bytes) -> bool:
        from cryptography.fernet import InvalidToken

        try:
            self._fernet(key).decrypt(sealed)
        except InvalidToken:
            return False
        return True

    def unseal(self, sealed: bytes) -> bytes:
        from cryptography.fernet import InvalidToken

        for attempt in range(2):
            keys = [self._sealing, *(k for k in self._keys if k != self._sealing)]
            for key in keys:
                try:
                    return self._fernet(key).decrypt(sealed)
                except InvalidToken:
                    continue
            if attempt == 0 and not self._reread():
                break
        raise CertbrokerError(
            "a stored secret cannot be decrypted with this master key; "
            "start certbroker with the master key the store was created with"
        )


NEXT_KEY_FILE = "master.key.next"  # written by rotate-master-key before it re-seals
PREVIOUS_KEY_FILE = "master.key.previous"  # the key before the last rotation


def read_key_files(data_dir: Path) -> list[bytes]:
    """The keys in <data_dir>/master.key, master.key.next and master.key.previous."""
    found = []
    for name in (MASTER_KEY_FILE, NEXT_KEY_FILE, PREVIOUS_KEY_FILE):
        try:
            key = (data_dir / name).read_bytes().strip()
        except FileNotFoundError:
            continue
        if key:
            found.append(key)
    return found


def new_master_key() -> bytes:
    from cryptography.fernet import Fernet

    return Fernet.generate_key()


def read_master_key(data_dir: Path, from_env: str = "") -> bytes | None:
    """The master key from CERTBROKER_MASTER_KEY, else from <data_dir>/master.key; None
    when there is neither."""
    if from_env:
        return from_env.strip().encode()
    try:
        return (data_dir / MASTER_KEY_FILE).read_bytes().strip()
    except FileNotFoundError:
        return None


def create_master_key(data_dir: Path) -> bytes:
    """A new <data_dir>/master.key, mode 0600 from the start. Atomic: when two processes
    create one at once, both return the one that was linked first."""
    path = data_dir / MASTER_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = data_dir / f".{MASTER_KEY_FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(new_master_key() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            # link() fails if another process created the key first; then theirs wins.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise _no_space(path, exc) or exc from None
    return path.read_bytes().strip()


def write_key_file(path: Path, key: bytes) -> None:
    """A key file, mode 0600 from the start, written whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise _no_space(path, exc) or exc from None


def _no_space(path: Path, exc: OSError) -> NoSpace | None:
    """A key file that could not be written for lack of space, in one line (the
    temporary file is gone, and nothing was put where the key belongs)."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return NoSpace(
        f"cannot write the key file {path}: no space left on its disk ({exc.strerror}); "
        f"nothing was written there; free space on {path.parent} and try again"
    )


def key_check(master_key: bytes) -> str:
    """A value that tells whether a key is the one a store was sealed with, and tells
    nothing about the key: HMAC-SHA256 under the key of a fixed text."""
    return hmac.new(master_key, b"certbroker master key check", hashlib.sha256).hexdigest()
