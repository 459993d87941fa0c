"""Pages of certificates on a real store: keyset cursors in every sort order (pending
certificates without an expiry included), filters, a name-limited caller's pages, the
dashboard's counts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.errors import UsageError
from certbroker.domain.models import CertificateStatus
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.services.browsing import Browsing
from certbroker.services.common import ServiceContext
from certbroker.store.repository import Repository
from tests.unit.conftest import LEASE, NOW, issued, new_certificate


@pytest.fixture
def browsing(repo: Repository) -> Browsing:
    """Twelve certificates: eight issued with expiries 10..80 days out in shuffled order
    (two pairs expire together), four pending; names a.shop / b.blog alternating."""
    days = [40, 10, 80, 20, 20, 70, 30, 30]
    for n in range(12):
        zone = "shop" if n % 2 == 0 else "blog"
        cert, order = repo.create_certificate(
            new_certificate(f"c{n:02d}.{zone}.example.com"), NOW, "w", NOW + LEASE
        )
        if n < len(days):
            plan = RenewalPlan(NOW + timedelta(days=5), RenewalReason.LIFETIME)
            repo.store_issued(cert.id, order.id, "w", issued(f"s{n}", days[n]), NOW, plan)
    ctx = ServiceContext(
        repo=repo,
        sealer=Sealer(new_master_key()),
        ca_factory=None,  # type: ignore[arg-type]
        clock=lambda: NOW,
    )
    return Browsing(ctx)


def walk(browsing: Browsing, size: int, **query: object) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(100):
        page = browsing.page(limit=size, cursor=cursor, **query)  # type: ignore[arg-type]
        assert len(page.items) <= size
        seen += [c.id for c in page.items]
        if page.next is None:
            return seen
        cursor = page.next
    raise AssertionError("the cursor never ended")


@pytest.mark.parametrize("size", [1, 2, 5, 50])
def test_every_sort_order_visits_each_certificate_once_in_order(
    browsing: Browsing, repo: Repository, size: int
) -> None:
    certs = {c.id: c for c in repo.list_certificates(now=NOW)}
    far = NOW + timedelta(days=10_000)

    def expires(i: int) -> object:
        return (certs[i].not_after or far, i)

    for sort, key, reverse in [
        ("id", lambda i: i, False),
        ("-id", lambda i: i, True),
        ("expires", expires, False),  # pending ones (no expiry) last
        ("-expires", expires, True),  # ... and first going down
        ("name", lambda i: (certs[i].names, i), False),
        ("-created", lambda i: (certs[i].created_at, i), True),
    ]:
        seen = walk(browsing, size, sort=sort)
        assert seen == sorted(certs, key=key, reverse=reverse), sort  # type: ignore[arg-type]


def test_filters_narrow_the_pages(browsing: Browsing) -> None:
    assert len(walk(browsing, 3, status=CertificateStatus.PENDING)) == 4
    assert len(walk(browsing, 3, expiring_within_days=25)) == 3  # 10, 20, 20 days
    shop = walk(browsing, 2, search="SHOP.example")
    assert len(shop) == 6
    assert walk(browsing, 2, search="50%_") == []  # LIKE's wildcards are plain text


def test_a_name_limited_caller_pages_through_its_certificates_only(browsing: Browsing) -> None:
    mine = walk(browsing, 2, limit_to=("*.shop.example.com",))
    assert len(mine) == 6
    assert all(
        browsing.repo.get_certificate(i).names[0].endswith(".shop.example.com") for i in mine
    )
    exact = walk(browsing, 2, limit_to=("c03.blog.example.com",))
    assert [browsing.repo.get_certificate(i).names[0] for i in exact] == ["c03.blog.example.com"]


def test_a_cursor_of_another_order_or_a_forged_one_is_refused(browsing: Browsing) -> None:
    cursor = browsing.page(limit=2, sort="expires").next
    assert cursor
    with pytest.raises(UsageError, match="another sort order"):
        browsing.page(limit=2, sort="-expires", cursor=cursor)
    for forged in ("nope", "e30", "WzEsMiwzXQ"):
        with pytest.raises(UsageError, match="cursor"):
            browsing.page(limit=2, cursor=forged)
    with pytest.raises(UsageError, match="unknown order"):
        browsing.page(sort="colour")


def test_the_dashboard_counts_what_a_person_should_look_at(browsing: Browsing) -> None:
    board = browsing.dashboard()
    assert board["counts"]["valid"] == 8 and board["counts"]["pending"] == 4
    assert board["expiring_7_days"] == 0 and board["expiring_30_days"] == 5
    timeline = board["timeline"]
    assert [t["days_left"] for t in timeline] == [10, 20, 20, 30, 30, 40, 70, 80]
