"""Access control on a real store: name patterns, roles, password and token storage,
sessions, log-in throttling, the last admin, Idempotency-Key claims."""

from __future__ import annotations

from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.access import (
    Action,
    Principal,
    Role,
    name_matches,
    names_allowed,
    parse_name_patterns,
)
from certbroker.domain.audit import Outcome
from certbroker.domain.errors import AccessDenied, NotAuthenticated, Throttled, UsageError
from certbroker.services.access import (
    FAILURES_PER_ADDRESS,
    FAILURES_PER_USER,
    KNOWN_ADDRESS_FOR,
    SESSION_IDLE,
    AccessService,
)
from certbroker.services.audit import AuditService
from certbroker.services.common import ServiceContext, secret_digest
from certbroker.services.leases import lease
from certbroker.store.access import mark_idempotent_work
from certbroker.store.repository import Repository
from certbroker.store.schema import api_tokens, sessions, users
from tests.unit.conftest import NOW


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


# The rules are what these tests check, not argon2's cost: the library's parameters took
# most of this module's minute on a loaded machine (still argon2id; production's in
# wiring.py).
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def access(repo: Repository, clock: Clock) -> AccessService:
    ctx = ServiceContext(
        repo=repo,
        sealer=Sealer(new_master_key()),
        ca_factory=lambda *a: None,  # type: ignore[arg-type, return-value]
        clock=clock,
    )
    return AccessService(ctx, CHEAP)


def test_name_patterns_match_exact_names_and_names_below_a_zone() -> None:
    assert parse_name_patterns(["WWW.Example.com.", "*.shop.example.com"]) == [
        "www.example.com",
        "*.shop.example.com",
    ]
    assert name_matches("*.shop.example.com", "pay.shop.example.com")
    assert name_matches("*.shop.example.com", "*.shop.example.com")
    assert name_matches("*.shop.example.com", "a.b.shop.example.com")
    assert not name_matches("*.shop.example.com", "shop.example.com")
    assert not name_matches("*.shop.example.com", "evilshop.example.com")
    assert not name_matches("www.example.com", "www.example.com.evil.net")
    # Every name must match; no patterns: no limit.
    assert names_allowed(["*.shop.example.com"], ["a.shop.example.com", "b.shop.example.com"])
    assert not names_allowed(["*.shop.example.com"], ["a.shop.example.com", "example.com"])
    assert names_allowed([], ["anything.example.org"])
    for bad in ("*", "*.", "a..b", "foo.*.com", "exa mple.com", "-a.com"):
        with pytest.raises(UsageError, match="name pattern"):
            parse_name_patterns([bad])


def test_each_role_may_do_what_the_one_below_may_and_more() -> None:
    viewer, operator, admin = (Principal("p", r) for r in Role)
    assert viewer.may(Action.READ) and not viewer.may(Action.READ_KEY)
    assert not viewer.may(Action.REQUEST) and not viewer.may(Action.REVOKE)
    assert operator.may(Action.READ_KEY) and operator.may(Action.DELETE)
    assert not operator.may(Action.MANAGE)
    assert all(admin.may(a) for a in Action)
    with pytest.raises(AccessDenied, match="needs the role operator"):
        AccessService.require(viewer, Action.REVOKE)


def test_passwords_are_stored_as_argon2_hashes_and_checked(
    access: AccessService, repo: Repository
) -> None:
    access.add_user("alice", Role.OPERATOR, "a long enough secret")
    with repo.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and "a long enough secret" not in stored
    session = access.login("alice", "a long enough secret", "192.0.2.1")
    assert access.session(session.secret).principal.role is Role.OPERATOR
    with pytest.raises(NotAuthenticated):
        access.login("alice", "a wrong secret!!", "192.0.2.1")
    with pytest.raises(UsageError, match="too short"):
        access.add_user("bob", Role.VIEWER, "short")


def test_tokens_are_stored_hashed_expire_and_record_their_last_use(
    access: AccessService, repo: Repository, clock: Clock
) -> None:
    token, secret = access.create_token("ci", Role.VIEWER, ["*.example.com"], expires_days=1)
    assert secret.startswith("cbt_") and token.prefix == secret[:10]
    with repo.engine.connect() as conn:
        stored = conn.execute(select(api_tokens.c.token_hash)).scalar_one()
    assert secret not in stored and len(stored) == 64
    principal = access.authenticate_token(secret, "198.51.100.7")
    assert principal.names == ("*.example.com",) and principal.role is Role.VIEWER
    used = repo.get_token(token.id)
    assert used.last_used_at == NOW and used.last_used_from == "198.51.100.7"
    clock.now = NOW + timedelta(days=1, seconds=1)
    with pytest.raises(NotAuthenticated, match="expired"):
        access.authenticate_token(secret, "198.51.100.7")
    access.revoke_token(token.id)
    with pytest.raises(NotAuthenticated, match="revoked"):
        access.authenticate_token(secret, "198.51.100.7")


def test_no_token_is_broader_than_the_one_that_made_it(
    access: AccessService, repo: Repository
) -> None:
    """Issue 24, finding 4: a token limited to some names could create an unlimited admin
    token. Admin work (users, tokens, clients, targets, settings) has no names to limit
    it by, so no admin is name-limited: such a token cannot be made, and one made before
    acts as an operator within its names; a token is made no broader than its maker."""
    with pytest.raises(UsageError, match="an admin token cannot be limited to names"):
        access.create_token("team-admin", Role.ADMIN, ["*.team.example.com"])
    limited = Principal(name="team-op", role=Role.OPERATOR, names=("*.team.example.com",),
                        token_id=99)  # fmt: skip
    with pytest.raises(AccessDenied, match="broader"):
        access.create_token("wider", Role.ADMIN, by=limited)
    with pytest.raises(AccessDenied, match="broader"):
        access.create_token("other", Role.OPERATOR, ["*.example.com"], by=limited)
    narrower, _ = access.create_token("ok", Role.VIEWER, ["www.team.example.com"], by=limited)
    assert narrower.role is Role.VIEWER

    secret = "cbt_" + "x" * 43  # one made before this rule, straight into the store
    repo.add_token(
        name="old-team-admin", role=Role.ADMIN, token_hash=secret_digest(secret),
        prefix=secret[:10], names=["*.team.example.com"], created_by=None, expires_at=None,
        now=NOW,
    )  # fmt: skip
    principal = access.authenticate_token(secret, "192.0.2.9")
    assert principal.role is Role.OPERATOR and principal.names == ("*.team.example.com",)


def test_sessions_end_when_idle_disabled_or_the_password_changes(
    access: AccessService, repo: Repository, clock: Clock
) -> None:
    access.add_user("root", Role.ADMIN, "the admin password")
    access.add_user("carol", Role.VIEWER, "carol's password")
    first = access.login("carol", "carol's password", "192.0.2.1")
    with repo.engine.connect() as conn:
        ids = conn.execute(select(sessions.c.id_hash)).scalars().all()
    assert first.secret not in ids  # the cookie's secret is not stored
    access.set_password("carol", "a new password!")
    with pytest.raises(NotAuthenticated):
        access.session(first.secret)
    second = access.login("carol", "a new password!", "192.0.2.1")
    access.set_enabled("carol", False)
    with pytest.raises(NotAuthenticated):
        access.session(second.secret)
    access.set_enabled("carol", True)
    third = access.login("carol", "a new password!", "192.0.2.1")
    clock.now += SESSION_IDLE + timedelta(seconds=1)
    with pytest.raises(NotAuthenticated):
        access.session(third.secret)
    fourth = access.login("carol", "a new password!", "192.0.2.1")
    access.logout(fourth.secret)
    with pytest.raises(NotAuthenticated):
        access.session(fourth.secret)


def test_log_ins_are_throttled_per_user_and_per_address(
    access: AccessService, clock: Clock
) -> None:
    access.add_user("dave", Role.VIEWER, "dave's password")
    for _ in range(FAILURES_PER_USER):
        with pytest.raises(NotAuthenticated):
            access.login("dave", "guess guess guess", "203.0.113.9")
    # Even the right password waits now, from any address dave never logged in from.
    with pytest.raises(Throttled):
        access.login("dave", "dave's password", "192.0.2.50")
    clock.now += timedelta(minutes=16)
    access.login("dave", "dave's password", "192.0.2.50")
    # One address trying many names is stopped too.
    for n in range(20):
        with pytest.raises(NotAuthenticated):
            access.login(f"user{n}", "guess guess guess", "203.0.113.66")
    with pytest.raises(Throttled):
        access.login("dave", "dave's password", "203.0.113.66")


STRANGER = "203.0.113.9"  # an attacker's address: never logged in from
KNOWN = "192.0.2.10"  # the admin logged in from here before
OTHER_KNOWN = "192.0.2.11"  # and from here
NEW = "198.51.100.20"  # the admin's new laptop: never logged in from
ADMIN_PASSWORD = "the admin password"


def _admin_who_logged_in_before(access: AccessService, clock: Clock) -> None:
    """User `admin`, who logged in from KNOWN and OTHER_KNOWN a minute ago."""
    access.add_user("admin", Role.ADMIN, ADMIN_PASSWORD)
    for address in (KNOWN, OTHER_KNOWN):
        access.logout(access.login("admin", ADMIN_PASSWORD, address).secret)
    clock.now += timedelta(minutes=1)


def _fail(access: AccessService, name: str, address: str, times: int = FAILURES_PER_USER) -> None:
    for _ in range(times):
        with pytest.raises(NotAuthenticated):
            access.login(name, "guess guess guess", address)


def _refusals(access: AccessService) -> list[str]:
    return [
        str(e.details["reason"])
        for e in AuditService(access.ctx).entries(action="user.login")
        if e.outcome is Outcome.REFUSED
    ]


def test_failures_from_a_stranger_do_not_lock_the_admin_out_of_an_address_it_used(
    access: AccessService, clock: Clock
) -> None:
    _admin_who_logged_in_before(access, clock)
    _fail(access, "admin", STRANGER)
    session = access.login("admin", ADMIN_PASSWORD, KNOWN)
    assert access.session(session.secret).principal.name == "admin"


def test_failures_from_a_stranger_do_not_lock_the_admin_out_of_the_console_host(
    access: AccessService, clock: Clock
) -> None:
    """Loopback is the broker's own machine: known for every user, never logged in from."""
    _admin_who_logged_in_before(access, clock)
    _fail(access, "admin", STRANGER)
    for loopback in ("127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"):
        access.login("admin", ADMIN_PASSWORD, loopback)


def test_the_stranger_is_throttled_for_that_user_even_with_the_right_password(
    access: AccessService, clock: Clock
) -> None:
    _admin_who_logged_in_before(access, clock)
    _fail(access, "admin", STRANGER)
    with pytest.raises(Throttled, match="too many failed log-ins"):
        access.login("admin", ADMIN_PASSWORD, STRANGER)
    assert _refusals(access)[-1].startswith("throttled: too many failed log-ins")
    # The admin logging in elsewhere does not give the stranger new guesses.
    access.login("admin", ADMIN_PASSWORD, KNOWN)
    with pytest.raises(Throttled):
        access.login("admin", ADMIN_PASSWORD, STRANGER)
    # The stranger may still try other names (below the per-address limit).
    access.add_user("frank", Role.VIEWER, "frank's password")
    access.login("frank", "frank's password", STRANGER)
    # And once the window has passed, the admin from there too.
    clock.now += timedelta(minutes=16)
    access.login("admin", ADMIN_PASSWORD, STRANGER)


def test_a_new_address_is_throttled_for_that_user_after_five_failures_elsewhere(
    access: AccessService, clock: Clock
) -> None:
    _admin_who_logged_in_before(access, clock)
    _fail(access, "admin", STRANGER)
    with pytest.raises(Throttled):
        access.login("admin", ADMIN_PASSWORD, NEW)
    assert _refusals(access)[-1].startswith("throttled: too many failed log-ins")
    access.login("admin", ADMIN_PASSWORD, KNOWN)  # only the addresses it knows get in


def test_a_known_address_is_throttled_by_its_own_failures(
    access: AccessService, clock: Clock
) -> None:
    _admin_who_logged_in_before(access, clock)
    _fail(access, "admin", KNOWN)
    with pytest.raises(Throttled):
        access.login("admin", ADMIN_PASSWORD, KNOWN)
    assert _refusals(access)[-1].startswith("throttled: too many failed log-ins")
    access.login("admin", ADMIN_PASSWORD, OTHER_KNOWN)  # another known address still gets in
    # Nor is the console host unlimited: five failures of its own, and it waits too,
    # however its address is spelt (127.0.0.0/8 is millions of addresses, one machine).
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "127.8.9.10"):
        _fail(access, "admin", loopback, times=1)
    for loopback in ("127.0.0.1", "127.0.0.3", "::1"):
        with pytest.raises(Throttled):
            access.login("admin", ADMIN_PASSWORD, loopback)
    access.login("admin", ADMIN_PASSWORD, OTHER_KNOWN)


def test_an_address_is_known_for_ninety_days_after_the_last_log_in_from_it(
    access: AccessService, clock: Clock
) -> None:
    access.add_user("admin", Role.ADMIN, ADMIN_PASSWORD)
    access.login("admin", ADMIN_PASSWORD, KNOWN)
    clock.now += timedelta(days=2)
    access.login("admin", ADMIN_PASSWORD, OTHER_KNOWN)
    clock.now += KNOWN_ADDRESS_FOR - timedelta(days=1)  # KNOWN: 91 days ago; OTHER: 89
    _fail(access, "admin", STRANGER)
    access.login("admin", ADMIN_PASSWORD, OTHER_KNOWN)
    with pytest.raises(Throttled):
        access.login("admin", ADMIN_PASSWORD, KNOWN)


def test_the_per_address_limit_holds_across_names_even_for_a_known_address(
    access: AccessService, clock: Clock
) -> None:
    _admin_who_logged_in_before(access, clock)
    _fail(access, "admin", STRANGER)
    access.login("admin", ADMIN_PASSWORD, KNOWN)  # the per-user limit does not stop it
    # Twenty failures from one address, for twenty names: that address waits, for all.
    for n in range(FAILURES_PER_ADDRESS):
        _fail(access, f"user{n}", OTHER_KNOWN, times=1)
    with pytest.raises(Throttled):
        access.login("admin", ADMIN_PASSWORD, OTHER_KNOWN)
    assert _refusals(access)[-1] == "throttled: too many failed log-ins from this address"
    for n in range(FAILURES_PER_ADDRESS):
        _fail(access, f"user{n}", "127.0.0.1", times=1)
    with pytest.raises(Throttled):
        access.login("admin", ADMIN_PASSWORD, "127.0.0.1")
    access.login("admin", ADMIN_PASSWORD, KNOWN)  # only those addresses


def test_the_last_enabled_admin_stays(access: AccessService) -> None:
    assert access.ensure_first_admin("first admin password") is None
    assert access.ensure_first_admin(None) is None  # only on the very first start
    for change in (
        lambda: access.set_enabled("admin", False),
        lambda: access.set_role("admin", Role.OPERATOR),
        lambda: access.delete_user("admin"),
    ):
        with pytest.raises(UsageError, match="last enabled admin"):
            change()
    access.add_user("erin", Role.ADMIN, "erin's password")
    access.set_role("admin", Role.VIEWER)
    with pytest.raises(UsageError, match="last enabled admin"):
        access.set_enabled("erin", False)


def test_a_generated_first_password_is_returned_once(repo: Repository, clock: Clock) -> None:
    ctx = ServiceContext(repo=repo, sealer=Sealer(new_master_key()), ca_factory=None, clock=clock)  # type: ignore[arg-type]
    service = AccessService(ctx, CHEAP)
    password = service.ensure_first_admin(None)
    assert password and len(password) >= 20
    service.login("admin", password, "127.0.0.1")
    assert service.ensure_first_admin(None) is None


def test_an_idempotency_key_is_held_then_answers_the_same(
    access: AccessService, clock: Clock
) -> None:
    alice = Principal("alice", Role.OPERATOR, user_id=1)
    bob = Principal("bob", Role.OPERATOR, user_id=2)
    assert access.claim_idempotency_key(alice, "k1", "h1") is None
    running = access.claim_idempotency_key(alice, "k1", "h1")
    assert running is not None and running.status_code is None
    assert access.claim_idempotency_key(bob, "k1", "h9") is None  # keys are per caller
    access.keep_idempotent_answer(alice, "k1", 202, '{"id": 4}', "/api/v1/certificates/4")
    kept = access.claim_idempotency_key(alice, "k1", "h1")
    assert kept is not None and kept.status_code == 202 and kept.body == '{"id": 4}'
    clock.now += timedelta(days=2)  # forgotten after a day
    assert access.claim_idempotency_key(alice, "k1", "h2") is None


def test_a_key_whose_request_died_is_taken_over_after_a_lease_by_the_same_request_only(
    access: AccessService, clock: Clock
) -> None:
    alice = Principal("alice", Role.OPERATOR, user_id=1)
    assert access.claim_idempotency_key(alice, "k1", "h1") is None  # a node takes it, dies
    clock.now += timedelta(seconds=30)
    running = access.claim_idempotency_key(alice, "k1", "h1")
    assert running is not None and running.status_code is None  # not yet: it may live
    clock.now += lease()
    other = access.claim_idempotency_key(alice, "k1", "h2")
    assert other is not None and other.request_hash == "h1"  # another request: refused
    assert access.claim_idempotency_key(alice, "k1", "h1") is None  # the retry takes it
    again = access.claim_idempotency_key(alice, "k1", "h1")
    assert again is not None and again.status_code is None  # and holds it now


def test_work_recorded_on_a_key_is_answered_not_done_again_after_its_node_died(
    access: AccessService, repo: Repository, clock: Clock
) -> None:
    alice = Principal("alice", Role.OPERATOR, user_id=1)
    assert access.claim_idempotency_key(alice, "k1", "h1") is None
    with repo._write() as conn:  # the transaction that created certificate 7 says so
        mark_idempotent_work(conn, (alice.key, "k1"), "certificate:7:9")
    early = access.claim_idempotency_key(alice, "k1", "h1")
    assert early is not None and early.work_done is None  # its node may still answer
    clock.now += lease()
    later = access.claim_idempotency_key(alice, "k1", "h1")
    assert later is not None and later.work_done == "certificate:7:9"  # answer, do not redo
