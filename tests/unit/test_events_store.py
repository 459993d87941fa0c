"""Alarms in a real SQLite store: raised once, kept (with the latest error) while attempts
keep failing, cleared by the next success; every step an event."""

from __future__ import annotations

from datetime import timedelta

from certbroker.domain.errors import AcmeProblem
from certbroker.domain.models import EventKind
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.store.repository import Repository
from tests.unit.conftest import LEASE, NOW, issued, new_certificate


def test_an_alarm_lasts_while_attempts_fail_and_clears_on_success(repo: Repository) -> None:
    cert, order = repo.create_certificate(new_certificate(), NOW, "w", NOW + LEASE)
    later = NOW + timedelta(minutes=1)
    problem = AcmeProblem(
        "urn:ietf:params:acme:error:connection", "refused", identifier="a.example.com"
    )
    repo.retry_later(
        order.id, "w", NOW, attempts=1, message="first", problem=problem, next_run_at=later
    )
    assert repo.try_claim(order.id, "w", later, later + LEASE, None)
    repo.retry_later(
        order.id, "w", later, attempts=2, message="second", problem=None, next_run_at=later
    )
    current = repo.get_certificate(cert.id)
    assert current.alarm_since == NOW  # since the first failure
    assert current.alarm_message == "second"  # the latest error
    assert [c.id for c in repo.certificates_in_alarm()] == [cert.id]
    assert repo.try_claim(order.id, "w", later, later + LEASE, None)
    plan = RenewalPlan(later + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(cert.id, order.id, "w", issued("s1"), later, plan)
    assert repo.get_certificate(cert.id).alarm_since is None
    assert repo.certificates_in_alarm() == []
    found = repo.list_events(cert_id=cert.id)
    assert [e.kind for e in found] == [
        EventKind.ATTEMPT_FAILED,
        EventKind.ALARM_RAISED,
        EventKind.ATTEMPT_FAILED,
        EventKind.ISSUED,
        EventKind.ALARM_CLEARED,
    ]
    assert found[0].message == "first [http-01 challenge for a.example.com]"
    assert found[0].problem == problem
    assert [e.kind for e in repo.list_events(cert_id=cert.id, limit=2)] == [
        EventKind.ISSUED,
        EventKind.ALARM_CLEARED,
    ]
    assert repo.list_events(since=later + timedelta(seconds=1)) == []
