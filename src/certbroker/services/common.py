"""What every service needs: the store, the sealer, the clock and a way to reach a CA."""

from __future__ import annotations

import hashlib
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from certbroker.domain.errors import UsageError
from certbroker.domain.models import Account
from certbroker.ports import CertificateAuthority

if TYPE_CHECKING:  # the cryptography modules load when first used (start-up of the CLI)
    from certbroker.crypto.keys import PrivateKey
    from certbroker.crypto.sealing import Sealer
    from certbroker.store.repository import Repository

Clock = Callable[[], datetime]
# (directory URL, account key, account URL or None, CA bundle PEM or None) -> CA client
CAFactory = Callable[[str, "PrivateKey", str | None, str | None], CertificateAuthority]

FAULT_ENV = "CERTBROKER_FAULT_KILL_AFTER"  # test hook: SIGKILL this process after a step
PAUSE_ENV = "CERTBROKER_FAULT_STOP_AT"  # test hook: SIGSTOP it there (the test SIGCONTs it)
_EMAIL = re.compile(r"^[^@\s:]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")


def secret_digest(secret: str) -> str:
    """SHA-256 of a token or session secret: what the store keeps of it (each is 256
    random bits, so a slow hash would add nothing but time to every request)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


def no_progress(_message: str) -> None:
    return None


def fault(step: str) -> None:
    """Crash testing: SIGKILL this process right after `step` is recorded, when
    CERTBROKER_FAULT_KILL_AFTER names it (tests/integration/test_crash_recovery.py); or
    stop it there (SIGSTOP) when CERTBROKER_FAULT_STOP_AT names it, so a test can change
    the world (crash the database) before it goes on (tests/integration/test_store_outage.py)."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) == step:
        os.kill(os.getpid(), signal.SIGSTOP)


@dataclass
class ServiceContext:
    repo: Repository
    sealer: Sealer
    ca_factory: CAFactory
    clock: Clock = utcnow

    def ca_for(self, account: Account, key: PrivateKey | None = None) -> CertificateAuthority:
        from certbroker.crypto.keys import load_private_key

        if key is None:
            key = load_private_key(
                self.sealer.unseal(self.repo.account_key_sealed(account.id)), "account key"
            )
        return self.ca_factory(account.directory_url, key, account.uri, account.ca_bundle)


def validate_emails(emails: list[str]) -> list[str]:
    cleaned = []
    for email in emails:
        value = email.strip().removeprefix("mailto:")
        if not _EMAIL.match(value):
            raise UsageError(f"{email!r} is not an e-mail address (name@example.com)")
        cleaned.append(value)
    return cleaned


def read_ca_bundle(data: bytes, source: str) -> str:
    """A PEM bundle of CA certificates, checked now rather than at the first TLS handshake."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UsageError(
            f"{source} holds no PEM certificate; give the CA's root certificate(s) in PEM"
        ) from None
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def make_master_key() -> str:
    """A fresh master key for CERTBROKER_MASTER_KEY (stored nowhere)."""
    from certbroker.crypto.sealing import new_master_key

    return new_master_key().decode()
