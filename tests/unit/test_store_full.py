"""A store that runs out of space, on a real SQLite file: SQLite's own SQLITE_FULL, made
to come by capping the database's pages (`PRAGMA max_page_count`, what a full disk does
to it), in the middle of a step's transaction. The step is stored whole or not at all,
the refusal is StoreFull, and the episode ends (one line, one event) once there is room.
tests/integration/test_full_disk.py fills real disks under `serve`."""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from certbroker.domain.errors import StoreFull, StoreUnavailable
from certbroker.domain.models import EventKind, IssuedCertificate, OrderState
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.store import space
from certbroker.store.repository import Repository
from tests.unit.conftest import LEASE, NOW, issued, new_certificate

UNCAPPED = 1 << 30


def squeeze(repo: Repository) -> None:
    """No free page left inside the file (the migrations leave some): a new row needs
    the file to grow, as on a store long in use."""
    with sqlite3.connect(str(repo.engine.url.database)) as conn:
        conn.execute("VACUUM")


@pytest.fixture
def cap(repo: Repository) -> list[int]:
    """The most pages the database may have, set on every connection as it is taken from
    the pool: `cap[0] = 1` caps it where it is now (SQLite raises a lower cap to that)."""
    limit = [UNCAPPED]

    def apply(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {limit[0]}")

    event.listen(repo.engine, "checkout", apply)
    return limit


@pytest.fixture(autouse=True)
def probe_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(space, "PROBE_EVERY", 0.0)


def _renewal_under_way(repo: Repository) -> tuple[int, int]:
    """A valid certificate (serial "old", key-1) and its renewal order, held by "w", with
    its new key and a challenge token stored: what `store_issued` ends."""
    cert, order = repo.create_certificate(new_certificate(key_sealed=b"key-1"), NOW, "w",
                                          NOW + LEASE)  # fmt: skip
    plan = RenewalPlan(NOW + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(cert.id, order.id, "w", issued("old"), NOW, plan)
    renewal = repo.add_renewal_order(cert.id, NOW, "w", NOW + LEASE)
    repo.set_order_key(renewal.id, "w", b"key-2", NOW)
    repo.put_challenges(renewal.id, [("token-1", "token-1.thumb", "a.example.com", "http-01")], NOW)
    return cert.id, renewal.id


def _big(serial: str) -> IssuedCertificate:
    """A certificate whose chain needs pages of its own (what a real one may need)."""
    plain = issued(serial)
    return IssuedCertificate(**{**plain.__dict__, "chain_pem": "CHAIN " * 20_000})


def test_a_step_refused_for_lack_of_space_is_stored_whole_once_there_is_room(
    repo: Repository, cap: list[int]
) -> None:
    cert_id, order_id = _renewal_under_way(repo)
    later = NOW + timedelta(days=61)
    plan = RenewalPlan(later + timedelta(days=60), RenewalReason.LIFETIME)
    squeeze(repo)
    cap[0] = 1  # no page more: the old certificate still goes into the history's page,
    with pytest.raises(StoreFull) as refused:  # the new chain finds no room
        repo.store_issued(cert_id, order_id, "w", _big("new"), later, plan)
    assert isinstance(refused.value, StoreUnavailable)  # serve waits it out
    assert "database or disk is full" in str(refused.value)
    assert f"the store {repo.engine.url.database} is full" in str(refused.value)
    assert repo.space.full is not None and repo.space.full.refused == 1

    # Nothing of the step was stored: not the history row written before the refusal.
    assert repo.history_of(cert_id) == []
    cert = repo.get_certificate(cert_id)
    assert (cert.serial, repo.certificate_key_sealed(cert_id)) == ("old", b"key-1")
    order = repo.get_order(order_id)
    assert order.state.active and order.lease_owner == "w"
    assert repo.order_key_sealed(order_id) == b"key-2"
    assert [c["name"] for c in repo.challenges_of(order_id)] == ["a.example.com"]
    assert [e.kind for e in repo.list_events()] == [EventKind.ISSUED]

    repo.space.settle()  # still no room: the probe is refused, and not counted
    assert repo.space.full is not None and repo.space.full.refused == 1

    cap[0] = UNCAPPED  # room again: the same step, once, whole
    repo.store_issued(cert_id, order_id, "w", _big("new"), later, plan)
    assert repo.space.full is None  # the write that committed had the store looked at
    assert repo.get_certificate(cert_id).serial == "new"
    assert repo.certificate_key_sealed(cert_id) == b"key-2"
    assert [p.serial for p in repo.history_of(cert_id)] == ["old"]
    assert repo.get_order(order_id).state is OrderState.VALID
    assert repo.challenges_of(order_id) == []
    kinds = [e.kind for e in repo.list_events()]
    assert kinds.count(EventKind.RENEWED) == 1
    (episode,) = [e for e in repo.list_events() if e.kind is EventKind.STORE_FULL]
    assert episode.certificate_id is None
    assert "1 write(s) were refused" in episode.message
    assert str(repo.engine.url.database) in episode.message


def test_a_request_on_a_full_store_stores_nothing(repo: Repository, cap: list[int]) -> None:
    repo.create_certificate(new_certificate("first.example.com"), NOW, None, NOW + LEASE)
    squeeze(repo)
    cap[0] = 1
    with pytest.raises(StoreFull):
        for n in range(200):  # the first page may have room for a few
            big = new_certificate(f"n{n}.example.com", b"k" * 2000)
            repo.create_certificate(big, NOW, None, NOW + LEASE)
    stored = {c.names[0] for c in repo.list_certificates(now=NOW)}
    assert all(repo.active_order_of(c.id) for c in repo.list_certificates(now=NOW))
    assert "first.example.com" in stored and len(stored) < 200


def test_lack_of_space_is_told_apart_from_other_errors() -> None:
    extend = 'could not extend file "base/16384/16465": No space left on device'
    hint = "\nHINT:  Check free disk space."
    assert space.no_space_reason(psycopg.errors.DiskFull(extend + hint)) == extend
    temp = psycopg.errors.IoError("could not write to file: No space left on device")
    assert space.no_space_reason(temp) == "could not write to file: No space left on device"
    assert space.no_space_reason(psycopg.errors.UniqueViolation("duplicate key")) is None
    assert space.no_space_reason(ValueError("No space left on device")) is None


def test_an_episode_is_one_line_whichever_threads_meet_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    since = datetime.now(UTC)
    first = StoreFull("/data/certbroker.db", "database or disk is full", since, advice="free")
    again = StoreFull("/data/certbroker.db", "database or disk is full", since, advice="free")
    later = StoreFull("/data/certbroker.db", "database or disk is full",
                      since + timedelta(minutes=5), advice="free")  # fmt: skip
    caplog.set_level(logging.ERROR, logger="certbroker.store")

    def report(*found: StoreFull) -> None:
        for exc in found:
            space.report_full(exc)

    threads = [threading.Thread(target=report, args=(first, again)) for _ in range(4)]
    threads.append(threading.Thread(target=report, args=(later,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [r.getMessage() for r in caplog.records if r.name == "certbroker.store"]
    assert len(lines) == 2, lines  # one per episode
    assert all(line.startswith("the store /data/certbroker.db is full") for line in lines)
    space.report_full(first)  # the main thread: a command says it as its error instead
    assert len([r for r in caplog.records if r.name == "certbroker.store"]) == 2
