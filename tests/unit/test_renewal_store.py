"""Renewal in a real SQLite store: what is due, one active order per certificate, and a
new certificate moving the old one into the history."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from certbroker.domain.models import OrderPurpose, OrderState
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.store.repository import Repository
from certbroker.store.schema import orders
from tests.unit.conftest import LEASE, NOW, issued, new_certificate


def _valid_certificate(repo: Repository, serial: str, renew_at: datetime) -> int:
    new = new_certificate(f"{serial}.example.com", key_sealed=b"key-1")
    cert, order = repo.create_certificate(new, NOW, "w", NOW + LEASE)
    plan = RenewalPlan(renew_at, RenewalReason.LIFETIME)
    repo.store_issued(cert.id, order.id, "w", issued(serial), NOW, plan)
    return cert.id


def test_only_valid_due_certificates_without_an_active_order_are_queued(
    repo: Repository,
) -> None:
    due = _valid_certificate(repo, "due", NOW - timedelta(minutes=1))
    later = _valid_certificate(repo, "later", NOW + timedelta(days=1))
    busy = _valid_certificate(repo, "busy", NOW - timedelta(minutes=1))
    repo.add_renewal_order(busy, NOW, None, NOW + LEASE)  # already being renewed
    revoked = _valid_certificate(repo, "revoked", NOW - timedelta(minutes=1))
    repo.mark_revoked(revoked, "keyCompromise", NOW)
    assert repo.enqueue_renewals(NOW, 100) == [due]
    assert repo.enqueue_renewals(NOW, 100) == []  # queued once, not twice
    (order,) = [o for o in repo.orders_of(due) if o.state is OrderState.QUEUED]
    assert order.purpose is OrderPurpose.RENEW
    assert repo.enqueue_renewals(NOW, 100, cert_ids=[later]) == [later]  # forced


def test_one_active_order_per_certificate_is_enforced_by_the_store(repo: Repository) -> None:
    cert_id = _valid_certificate(repo, "one", NOW)
    first = repo.add_renewal_order(cert_id, NOW, None, NOW + LEASE)
    assert repo.add_renewal_order(cert_id, NOW, None, NOW + LEASE).id == first.id
    with pytest.raises(IntegrityError), repo.engine.begin() as conn:
        conn.execute(
            insert(orders).values(
                certificate_id=cert_id,
                state="queued",
                attempts=0,
                created_at=NOW,
                updated_at=NOW,
            )
        )


def test_a_renewal_moves_the_old_certificate_and_key_into_the_history(
    repo: Repository,
) -> None:
    cert_id = _valid_certificate(repo, "old", NOW + timedelta(days=60))
    order = repo.add_renewal_order(cert_id, NOW, "w", NOW + LEASE)
    repo.set_order_key(order.id, "w", b"key-2", NOW)
    assert repo.certificate_key_sealed(cert_id) == b"key-1"  # not before the new cert
    later = NOW + timedelta(days=61)
    plan = RenewalPlan(later + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(cert_id, order.id, "w", issued("new"), later, plan)
    cert = repo.get_certificate(cert_id)
    assert (cert.serial, cert.renew_at) == ("new", plan.renew_at)
    assert repo.certificate_key_sealed(cert_id) == b"key-2"
    assert repo.order_key_sealed(order.id) is None  # one copy of the key, not two
    (past,) = repo.history_of(cert_id)
    assert (past.serial, past.replaced_at) == ("old", later)
    assert past.replaced_because == "renewed early, on request"  # ordered before due
    repo.delete_certificate(cert_id)
    assert repo.history_of(cert_id) == []
