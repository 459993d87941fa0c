"""The store's DNS side: accounts and their zones, and the TXT records of orders, which
outlive a crash so that exactly what was written gets removed."""

from __future__ import annotations

import pytest

from certbroker.domain.errors import NotFoundError, UsageError
from certbroker.domain.models import OrderState
from certbroker.store.repository import Repository
from tests.unit.conftest import LEASE, NOW, new_certificate


def add(repo: Repository, name: str, zones: list[str]) -> int:
    return repo.add_dns_account(
        name=name, provider="rfc2136", settings={"server": "127.0.0.1"},
        secret_names=["tsig_secret"], secrets_sealed=b"sealed", zones=zones, now=NOW,
    ).id  # fmt: skip


def test_zones_pick_the_default_account_by_longest_match(repo: Repository) -> None:
    top = add(repo, "top", ["example.com"])
    sub = add(repo, "sub", ["sub.example.com"])
    assert repo.dns_account_for("_acme-challenge.www.example.com") == top
    assert repo.dns_account_for("_acme-challenge.a.sub.example.com") == sub
    assert repo.dns_account_for("_acme-challenge.example.org") is None


def test_a_zone_has_one_default_account_and_nothing_is_half_stored(repo: Repository) -> None:
    add(repo, "top", ["example.com"])
    with pytest.raises(UsageError, match=r"zone example.com already has a default DNS account"):
        add(repo, "other", ["example.org", "example.com"])
    with pytest.raises(NotFoundError):
        repo.get_dns_account("other")
    assert repo.dns_account_for("example.org") is None  # its first zone was rolled back
    with pytest.raises(UsageError, match="already exists"):
        add(repo, "top", [])


def test_records_are_kept_until_their_order_ends_then_listed_for_removal(
    repo: Repository,
) -> None:
    account = add(repo, "top", ["example.com"])
    _, order = repo.create_certificate(new_certificate(), NOW, "me", NOW + LEASE)
    items = [
        ("example.com", "_acme-challenge.example.com", "v1", account),
        ("*.example.com", "_acme-challenge.example.com", "v2", account),
    ]
    records = repo.add_dns_records(order.id, "me", items, NOW)
    again = repo.add_dns_records(order.id, "me", items, NOW)  # a resumed order: no duplicates
    assert [r.id for r in again] == [r.id for r in records]
    assert [(r.value, r.written) for r in records] == [("v1", False), ("v2", False)]
    repo.mark_dns_record_written(records[0].id)
    assert [r.written for r in repo.dns_records_of(order.id)] == [True, False]
    assert repo.dns_records_to_remove(NOW) == []  # the order is still active
    assert repo.dns_account_users(account) == (0, 2)

    repo.fail_order(order.id, "me", NOW, "gave up", None)
    assert repo.get_order(order.id).state is OrderState.FAILED
    due = repo.dns_records_to_remove(NOW)
    assert [r.value for r in due] == ["v1", "v2"]
    repo.dns_cleanup_failed(due[0].id, "server down", NOW.replace(hour=13))
    assert [r.value for r in repo.dns_records_to_remove(NOW)] == ["v2"]  # v1 retried later
    repo.forget_dns_record(due[1].id)
    assert [r.value for r in repo.dns_records_to_remove(NOW.replace(hour=13))] == ["v1"]


def test_records_need_the_orders_lease(repo: Repository) -> None:
    _, order = repo.create_certificate(new_certificate(), NOW, "me", NOW + LEASE)
    from certbroker.domain.errors import LeaseLost

    with pytest.raises(LeaseLost):
        repo.add_dns_records(order.id, "someone-else", [("a", "b", "c", None)], NOW)
    assert repo.dns_records_of(order.id) == []


def test_an_order_awaiting_a_person_is_not_claimed_by_workers(repo: Repository) -> None:
    _, order = repo.create_certificate(new_certificate(), NOW, "me", NOW + LEASE)
    repo.await_person(order.id, "me", NOW, "write the records", first=True)
    assert repo.get_order(order.id).state is OrderState.AWAITING_DNS
    assert repo.claim_next("worker", NOW, NOW + LEASE) is None
    assert repo.claimable_orders(NOW, 10) == []
    assert repo.try_claim(order.id, "cli", NOW, NOW + LEASE, None)  # `cert verify` may
    assert [e.kind.value for e in repo.list_events(cert_id=1)] == ["awaiting-dns"]


def test_a_renewal_waiting_for_a_person_raises_the_alarm(repo: Repository) -> None:
    from certbroker.domain.renewal import RenewalPlan, RenewalReason
    from tests.unit.conftest import issued

    cert, order = repo.create_certificate(new_certificate(), NOW, "w", NOW + LEASE)
    repo.store_issued(
        cert.id, order.id, "w", issued("s1"), NOW, RenewalPlan(NOW, RenewalReason.LIFETIME)
    )
    renewal = repo.add_renewal_order(cert.id, NOW, "w", NOW + LEASE)
    repo.await_person(renewal.id, "w", NOW, "write _acme-challenge.a.example.com", first=True)
    shown = repo.get_certificate(cert.id)
    assert shown.alarm_since == NOW
    assert shown.alarm_message == "renewal waits for a person: write _acme-challenge.a.example.com"
    assert repo.try_claim(renewal.id, "cli", NOW, NOW + LEASE, None)  # `cert verify`
    repo.await_person(renewal.id, "cli", NOW, "still waiting", first=False)  # no second alarm
    kinds = [e.kind.value for e in repo.list_events(cert_id=cert.id)]
    assert kinds.count("alarm-raised") == 1 and kinds.count("awaiting-dns") == 1
