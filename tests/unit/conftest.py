"""Fixtures for unit tests: a real SQLite store in a temporary directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.domain.keys import KeyPolicy
from certbroker.domain.models import (
    AccountStatus,
    ChallengeType,
    IssuedCertificate,
    NewCertificate,
)
from certbroker.store.db import make_engine, migrate
from certbroker.store.repository import Repository

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=120)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A migrated store with one ACME account (ID 1)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    migrate(engine)  # a second run is a no-op
    repo = Repository(engine)
    repo.add_account(
        name="a",
        directory_url="https://ca/dir",
        ca_bundle=None,
        emails=["a@example.com"],
        key_type="ec-p256",
        key_sealed=b"sealed",
        uri="https://ca/acct/1",
        status=AccountStatus.VALID,
        terms_of_service=None,
        eab_kid=None,
        now=NOW,
    )
    return repo


def new_certificate(name: str = "a.example.com", key_sealed: bytes = b"k") -> NewCertificate:
    """A request for one name on account 1, as the store receives it."""
    return NewCertificate(
        names=[name],
        account_id=1,
        challenge=ChallengeType.HTTP_01,
        key_type="ec-p256",
        key_policy=KeyPolicy.NEW,
        subject={},
        key_sealed=key_sealed,
    )


def issued(serial: str, days: int = 90) -> IssuedCertificate:
    """What a CA's certificate looks like to the store (no real PEM needed there)."""
    return IssuedCertificate(
        cert_pem=f"PEM {serial}",
        chain_pem="CHAIN",
        serial=serial,
        issuer="CN=CA",
        not_before=NOW,
        not_after=NOW + timedelta(days=days),
        fingerprint_sha256=f"fp-{serial}",
        order_url=f"https://ca/order/{serial}",
    )
