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
import hashlib
import hmac
import os
from pathlib import Path
from typing import TYPE_CHECKING

from certbroker.domain.errors import CertbrokerError, ConfigError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

MASTER_KEY_FILE = "master.key"


class Sealer:
    """Seals and unseals secrets (private keys, DNS credentials) with the master key."""

    def __init__(self, master_key: bytes) -> None:
        # Checked now, as Fernet would; Fernet itself (and the cipher modules it loads)
        # is made on first use, which commands that read no secret (cert list) never pay.
        try:
            valid = len(base64.urlsafe_b64decode(master_key)) == 32
        except (binascii.Error, ValueError, TypeError):
            valid = False
        if not valid:
            raise ConfigError(
                "the master key is not a valid key (32 url-safe base64 bytes); "
                "generate one with `certbroker config new-master-key`"
            )
        self._key = master_key
        self._made: Fernet | None = None

    @property
    def _fernet(self) -> Fernet:
        if self._made is None:
            from cryptography.fernet import Fernet

            self._made = Fernet(self._key)
        return self._made

    def seal(self, secret: bytes) -> bytes:
        return self._fernet.encrypt(secret)

    def unseal(self, sealed: bytes) -> bytes:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            raise CertbrokerError(
                "a stored secret cannot be decrypted with this master key; "
                "start certbroker with the master key the store was created with"
            ) from None


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
    return path.read_bytes().strip()


def key_check(master_key: bytes) -> str:
    """A value that tells whether a key is the one a store was sealed with, and tells
    nothing about the key: HMAC-SHA256 under the key of a fixed text."""
    return hmac.new(master_key, b"certbroker master key check", hashlib.sha256).hexdigest()
