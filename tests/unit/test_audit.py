"""The audit log on a real store: secrets never reach a record, a diff names what
changed, the database refuses UPDATE and DELETE, pages follow keyset cursors, and who
acts is what the request's (or the CLI's) holder says, also across the worker thread
FastAPI runs a dependency in."""

from __future__ import annotations

import contextvars
import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.access import Role
from certbroker.domain.audit import SECRET, ActorKind, Outcome, diff, redact
from certbroker.domain.errors import NotAuthenticated, UsageError
from certbroker.services import audit
from certbroker.services.access import AccessService
from certbroker.services.audit import AuditService
from certbroker.services.common import ServiceContext
from certbroker.store.repository import Repository
from tests.unit.conftest import NOW


@pytest.fixture
def ctx(repo: Repository) -> ServiceContext:
    def no_ca(*_args: object) -> None:
        raise AssertionError("no CA here")

    return ServiceContext(
        repo=repo, sealer=Sealer(new_master_key()), ca_factory=no_ca, clock=lambda: NOW
    )  # type: ignore[arg-type]


def test_secrets_are_replaced_wherever_they_are() -> None:
    given = {
        "name": "ns1",
        "tsig_key_name": "certbroker-com",
        "tsig_secret": "c2VjcmV0",
        "options": {"password": "hunter22", "auth_token": "t", "user": "u"},
        "key_type": "ec-p256",
        "smtp_password": ["old", "new"],
        "webhook_secret": "whsec_abc",
        "pem": "-----BEGIN EC PRIVATE KEY-----\nMHc...\n-----END EC PRIVATE KEY-----\n",
        "token": "cbt_" + "x" * 43,
        "prefix": "cbt_abcdef",
        "url": "https://user:s3cr3t-value@dns.example/api",
        "unset_password": None,
    }
    cleaned = redact(given, frozenset({"s3cr3t-value"}))
    assert cleaned["tsig_secret"] == SECRET
    assert cleaned["options"] == {"password": SECRET, "auth_token": SECRET, "user": "u"}
    assert cleaned["smtp_password"] == SECRET and cleaned["webhook_secret"] == SECRET
    assert cleaned["pem"] == SECRET and cleaned["token"] == SECRET
    assert cleaned["url"] == f"https://user:{SECRET}@dns.example/api"
    # What names a secret, or says there is none, stays readable.
    assert cleaned["tsig_key_name"] == "certbroker-com" and cleaned["key_type"] == "ec-p256"
    assert cleaned["prefix"] == "cbt_abcdef" and cleaned["unset_password"] is None
    assert "hunter22" not in repr(cleaned) and "c2VjcmV0" not in repr(cleaned)


def test_a_diff_names_only_what_changed() -> None:
    old = {"emails": ["a@x.org"], "status": "valid", "gone": 1}
    new = {"emails": ["b@x.org"], "status": "valid", "added": 2}
    assert diff(old, new) == {
        "emails": [["a@x.org"], ["b@x.org"]],
        "gone": [1, None],
        "added": [None, 2],
    }


def test_records_are_appended_and_the_database_refuses_changing_them(
    repo: Repository, ctx: ServiceContext
) -> None:
    audit.record(ctx, "user.add", "user", "bob", {"role": "viewer", "password": "pw-pw-pw-pw"})
    (entry,) = AuditService(ctx).entries()
    assert (entry.action, entry.object_id, entry.outcome) == ("user.add", "bob", Outcome.OK)
    assert entry.details == {"role": "viewer", "password": SECRET}
    assert entry.actor_kind is ActorKind.SYSTEM  # outside any request or command
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"), repo.engine.begin() as conn:
            conn.execute(text(statement))
    assert [e.actor for e in AuditService(ctx).entries()] == [entry.actor]


def test_pages_follow_the_cursor_newest_first_and_filters_hold(ctx: ServiceContext) -> None:
    service = AuditService(ctx)
    for n in range(7):
        audit.record(ctx, f"certificate.{'renew' if n % 2 else 'revoke'}", "certificate", n)
    audit.record(ctx, "user.add", "user", "x")
    seen: list[str | None] = []
    cursor = None
    while True:
        page = service.page(action="certificate.", cursor=cursor, limit=3)
        seen += [e.object_id for e in page.entries]
        if page.next is None:
            break
        cursor = page.next
    assert seen == ["6", "5", "4", "3", "2", "1", "0"]
    assert [e.object_id for e in service.entries(action="certificate.renew")] == ["1", "3", "5"]
    assert service.entries(since=NOW + timedelta(seconds=1)) == []
    assert [e.action for e in service.entries(limit=1)] == ["user.add"]  # the newest
    with pytest.raises(UsageError, match="cursor"):
        service.page(cursor="bm90LWEtY3Vyc29y")


def test_the_actor_set_in_a_worker_thread_is_the_requests(ctx: ServiceContext) -> None:
    """FastAPI runs a plain dependency in a thread with a copy of the context: the copy
    holds the same holder, so who authenticated there is who the endpoint acts as."""
    token = audit.begin_request("192.0.2.7")
    try:
        assert audit.current_actor().kind is ActorKind.ANONYMOUS
        copied = contextvars.copy_context()
        thread = threading.Thread(
            target=copied.run, args=(audit.act_as, ActorKind.TOKEN, "deploy-bot")
        )
        thread.start()
        thread.join()
        audit.record(ctx, "certificate.export-key", "certificate", 1, {"format": "pem"})
    finally:
        audit.end_request(token)
    assert audit.current_actor().kind is ActorKind.SYSTEM
    (entry,) = AuditService(ctx).entries()
    assert (entry.actor_kind, entry.actor, entry.address) == (
        ActorKind.TOKEN,
        "deploy-bot",
        "192.0.2.7",
    )


def test_a_failed_log_in_is_recorded_as_refused(ctx: ServiceContext) -> None:
    service = AccessService(ctx)
    service.add_user("carol", Role.VIEWER, "correct-horse-1")
    with pytest.raises(NotAuthenticated):
        service.login("carol", "wrong-password-1", "198.51.100.4")
    refused = [e for e in AuditService(ctx).entries() if e.outcome is Outcome.REFUSED]
    assert [(e.action, e.object_id) for e in refused] == [("user.login", "carol")]
    assert refused[0].details["address"] == "198.51.100.4"
    assert "wrong-password-1" not in repr(refused[0])


def test_a_flood_of_refusals_is_recorded_thirty_a_minute_and_the_rest_counted(
    repo: Repository,
) -> None:
    now = [NOW]
    ctx = ServiceContext(repo=repo, sealer=Sealer(new_master_key()), ca_factory=None,  # type: ignore[arg-type]
                         clock=lambda: now[0])  # fmt: skip
    service = AuditService(ctx)
    token = audit.begin_request("198.51.100.9")
    try:
        for _ in range(100):
            service.refused("GET", "/api/v1/certificates", "no credentials", 401)
        assert len(service.entries()) == audit.REFUSALS_PER_MINUTE
        now[0] = NOW + timedelta(minutes=1)
        service.refused("GET", "/api/v1/certificates", "no credentials", 401)
    finally:
        audit.end_request(token)
    last = service.entries()[-1]
    assert last.outcome is Outcome.REFUSED and last.address == "198.51.100.9"
    assert last.details["refusals_not_recorded_before"] == 100 - audit.REFUSALS_PER_MINUTE
