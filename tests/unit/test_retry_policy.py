"""When a failing certificate is tried again (domain/retry.py): the schedule, the
ceiling, the emergency rule and what needs a person, with the clock and randomness
injected; and in a real SQLite store, which failing certificates the scheduler queues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certbroker.domain.errors import AcmeProblem
from certbroker.domain.models import EventKind, OrderPurpose, OrderState
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.domain.retry import (
    RETRY_CEILING,
    heals_by_itself,
    next_try,
    retry_pause,
    what_a_person_must_change,
)
from certbroker.store.repository import Repository
from tests.unit.conftest import LEASE, NOW, issued, new_certificate

MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def none() -> float:
    return 0.0


def test_the_first_retry_is_soon_then_the_pause_grows_to_the_ceiling() -> None:
    pauses = [retry_pause(n) for n in range(1, 9)]
    assert pauses == [MIN, 5 * MIN, 15 * MIN, HOUR, 2 * HOUR, 4 * HOUR, 6 * HOUR, 6 * HOUR]
    assert retry_pause(1000) == RETRY_CEILING


def test_jitter_only_shortens_a_pause_by_a_tenth_at_most() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    assert next_try(3, now, heals=True, uniform=none) == now + 15 * MIN
    earliest = next_try(3, now, heals=True, uniform=lambda: 0.999999)
    assert now + 13.5 * MIN <= earliest < now + 15 * MIN


def test_what_needs_a_person_waits_the_ceiling_and_is_still_tried() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    caa = AcmeProblem("urn:ietf:params:acme:error:caa", "CAA forbids it")
    assert not heals_by_itself(caa, transient=False)
    assert next_try(1, now, heals=False, uniform=none) == now + RETRY_CEILING
    compound = AcmeProblem("urn:ietf:params:acme:error:compound", subproblems=(caa,))
    assert not heals_by_itself(compound, transient=False)
    refused = AcmeProblem("urn:ietf:params:acme:error:connection", "connection refused")
    assert heals_by_itself(refused, transient=False)  # a responder down, a firewall
    assert not heals_by_itself(None, transient=False)  # a deactivated account, say
    assert heals_by_itself(None, transient=True)  # the CA unreachable


def test_past_the_emergency_point_no_pause_is_longer_than_an_hour() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    soon_expired = now - MIN
    assert next_try(8, now, heals=True, emergency=soon_expired, uniform=none) == now + HOUR
    assert next_try(1, now, heals=False, emergency=soon_expired, uniform=none) == now + HOUR
    assert next_try(8, now, heals=True, emergency=now + HOUR, uniform=none) == now + 6 * HOUR


def _failed(repo: Repository, name: str, next_try_at: datetime, valid_first: bool) -> int:
    cert, order = repo.create_certificate(new_certificate(name), NOW, "w", NOW + LEASE)
    if valid_first:
        plan = RenewalPlan(NOW + 60 * 24 * HOUR, RenewalReason.LIFETIME)
        repo.store_issued(cert.id, order.id, "w", issued(name), NOW, plan)
        order = repo.add_renewal_order(cert.id, NOW, "w", NOW + LEASE)
    repo.fail_order(order.id, "w", NOW, "validation failed", None, next_try_at=next_try_at)
    return cert.id


def test_the_scheduler_queues_failing_certificates_when_their_try_comes(
    repo: Repository,
) -> None:
    never_issued = _failed(repo, "new.example.com", NOW + MIN, valid_first=False)
    renewal = _failed(repo, "old.example.com", NOW + MIN, valid_first=True)
    later = _failed(repo, "later.example.com", NOW + HOUR, valid_first=False)
    stopped = _failed(repo, "stopped.example.com", NOW + MIN, valid_first=False)
    repo.set_disabled(stopped, True, NOW, None)
    assert repo.get_certificate(never_issued).status.value == "failed"
    assert repo.get_certificate(renewal).status.value == "valid"  # still in use

    assert repo.enqueue_retries(NOW, 100) == []  # not yet
    assert repo.enqueue_renewals(NOW + MIN, 100) == []  # a failing one is not "due"
    assert sorted(repo.enqueue_retries(NOW + MIN, 100)) == [never_issued, renewal]
    assert repo.enqueue_retries(NOW + MIN, 100) == []  # one active order each, once
    active = {c: repo.active_order_of(c) for c in (never_issued, renewal)}
    purposes = {c: o.purpose for c, o in active.items() if o is not None}
    assert purposes == {never_issued: OrderPurpose.ISSUE, renewal: OrderPurpose.RENEW}
    assert repo.active_order_of(later) is None and repo.active_order_of(stopped) is None
    kinds = [e.kind for e in repo.list_events(cert_id=never_issued)]
    assert EventKind.RETRY_QUEUED in kinds

    repo.set_disabled(stopped, False, NOW, NOW)  # `cert enable`: tried at once
    assert repo.enqueue_retries(NOW, 100) == [stopped]
    queued = repo.active_order_of(stopped)
    assert queued is not None and queued.state is OrderState.QUEUED


def test_success_ends_the_retries_and_says_how_long_it_was_failing(repo: Repository) -> None:
    cert_id = _failed(repo, "heal.example.com", NOW + MIN, valid_first=False)
    assert repo.enqueue_retries(NOW + MIN, 10) == [cert_id]
    order = repo.active_order_of(cert_id)
    assert order is not None and repo.try_claim(order.id, "w2", NOW, NOW + LEASE, None)
    later = NOW + 3 * MIN
    plan = RenewalPlan(later + 60 * 24 * HOUR, RenewalReason.LIFETIME)
    repo.store_issued(cert_id, order.id, "w2", issued("heal"), later, plan)
    cert = repo.get_certificate(cert_id)
    assert cert.next_try_at is None and cert.alarm_since is None
    cleared = [e for e in repo.list_events(cert_id=cert_id) if e.kind is EventKind.ALARM_CLEARED]
    assert len(cleared) == 1
    assert "failing for 3 min, 1 attempt(s) failed meanwhile" in cleared[0].message


def test_what_needs_a_person_says_what_to_change() -> None:
    caa = AcmeProblem("urn:ietf:params:acme:error:caa", "CAA forbids it")
    assert "CAA record" in what_a_person_must_change(caa)
    refused = AcmeProblem("urn:ietf:params:acme:error:rejectedIdentifier", "no")
    both = AcmeProblem("urn:ietf:params:acme:error:compound", subproblems=(caa, refused, caa))
    advice = what_a_person_must_change(both)
    assert advice.count("CAA record") == 1 and "will not issue for this name" in advice
    assert what_a_person_must_change(None) == "see the error above"
