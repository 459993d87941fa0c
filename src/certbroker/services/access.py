"""People and programs that use the broker: users with roles and passwords, API tokens,
console sessions, log-in throttling, and the answers kept for Idempotency-Key.

Log-in throttling (docs/operations.md, "Log-in throttling"), failures counted over
THROTTLE_WINDOW: an address with FAILURES_PER_ADDRESS failures (any user names) waits. A
user name with FAILURES_PER_USER failures (from anywhere) waits, except at the addresses
it is known at: one it logged in from within KNOWN_ADDRESS_FOR (the audit log's
`user.login` records say), or loopback (the broker's own machine). A known address waits
only after FAILURES_PER_USER failures of its own for that user. So guesses from anywhere
cannot lock a user out of where they log in from, and every address still has a limit.

Secrets are never stored as given: passwords as argon2id hashes, tokens and session
secrets as SHA-256 (each is 256 random bits, so a slow hash adds nothing)."""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING

from certbroker.domain.access import (
    Action,
    ApiToken,
    Principal,
    Role,
    User,
    broader_than,
    check_password,
    check_user_name,
    parse_name_patterns,
    require,
    token_role,
)
from certbroker.domain.audit import Actor, ActorKind, Outcome
from certbroker.domain.errors import (
    AccessDenied,
    NotAuthenticated,
    StoreFull,
    Throttled,
    UsageError,
)
from certbroker.services import audit
from certbroker.services.common import ServiceContext, secret_digest
from certbroker.services.leases import lease

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from certbroker.store.access import StoredAnswer

TOKEN_PREFIX = "cbt_"  # noqa: S105 - recognisable in a leak, as GitHub's ghp_ tokens are
SESSION_IDLE = timedelta(hours=8)  # a console session ends after this long unused
SESSION_TOUCH = timedelta(minutes=5)  # its expiry moves on at most this often
THROTTLE_WINDOW = timedelta(minutes=15)
# Failures within the window (see the module's docstring): a user name waits after
# FAILURES_PER_USER, except at its known addresses, each of which waits after that many
# failures of its own; an address waits after FAILURES_PER_ADDRESS, for every user name.
FAILURES_PER_USER = 5
FAILURES_PER_ADDRESS = 20
KNOWN_ADDRESS_FOR = timedelta(days=90)  # a user's address is known this long after a log-in
LOOPBACK = "loopback"  # known for every user; how its failures are counted (`_throttled_as`)
IDEMPOTENCY_KEEP = timedelta(hours=24)
FIRST_ADMIN = "admin"


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf_token: str


@dataclass(frozen=True)
class NewSession:
    secret: str  # goes into the cookie, and nowhere else
    csrf_token: str
    user: User


class AccessService:
    def __init__(self, ctx: ServiceContext, hasher: PasswordHasher | None = None) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self._given_hasher = hasher  # tests of the rules: cheaper parameters

    @cached_property
    def _hasher(self) -> PasswordHasher:
        from argon2 import PasswordHasher

        # argon2id, the library's (RFC 9106) parameters
        return self._given_hasher or PasswordHasher()

    @cached_property
    def _nobody(self) -> str:
        """The hash of a password nobody knows: what an unknown user name is checked
        against, so it costs the same time as a wrong password."""
        return self._hasher.hash(secrets.token_urlsafe(32))

    def _hash(self, password: str) -> str:
        return self._hasher.hash(check_password(password))

    # -- users ---------------------------------------------------------------------------

    def ensure_first_admin(self, password: str | None) -> str | None:
        """On first start: user `admin` with `password`, or a generated one, which is
        returned (to be shown once). None when users exist already."""
        if self.repo.count_users():
            return None
        generated = None
        if not password:
            generated = password = secrets.token_urlsafe(18)
        try:
            self.repo.add_user(FIRST_ADMIN, Role.ADMIN, self._hash(password), self.ctx.clock())
        except UsageError as exc:
            if self.repo.count_users():  # another process made it at the same moment
                return None
            raise UsageError(f"CERTBROKER_ADMIN_PASSWORD: {exc}") from None
        return generated

    def users(self) -> list[User]:
        return self.repo.list_users()

    def user(self, ref: str | int) -> User:
        return self.repo.get_user(ref)

    def add_user(self, name: str, role: Role, password: str) -> User:
        check_user_name(name)
        user = self.repo.add_user(name, role, self._hash(password), self.ctx.clock())
        audit.record(self.ctx, "user.add", "user", user.name, {"role": role.value})
        return user

    def set_password(self, ref: str | int, password: str) -> User:
        user = self.repo.get_user(ref)
        self.repo.set_password(user.id, self._hash(password), self.ctx.clock())
        audit.record(self.ctx, "user.password", "user", user.name, {"password_changed": True})
        return self.repo.get_user(user.id)

    def set_role(self, ref: str | int, role: Role) -> User:
        user = self.repo.get_user(ref)
        self.repo.change_user(user.id, self.ctx.clock(), role=role)
        audit.record(
            self.ctx, "user.role", "user", user.name, {"role": [user.role.value, role.value]}
        )
        return self.repo.get_user(user.id)

    def set_enabled(self, ref: str | int, enabled: bool) -> User:
        user = self.repo.get_user(ref)
        self.repo.change_user(user.id, self.ctx.clock(), enabled=enabled)
        audit.record(
            self.ctx,
            "user.enable" if enabled else "user.disable",
            "user",
            user.name,
            {"enabled": [user.enabled, enabled]},
        )
        return self.repo.get_user(user.id)

    def delete_user(self, ref: str | int) -> User:
        user = self.repo.get_user(ref)
        self.repo.change_user(user.id, self.ctx.clock(), delete_it=True)
        audit.record(self.ctx, "user.delete", "user", user.name, {"role": user.role.value})
        return user

    # -- log-in and sessions -------------------------------------------------------------

    def login(self, name: str, password: str, address: str) -> NewSession:
        """A console session for `name`; NotAuthenticated for a wrong name or password
        (the same words for both), Throttled after too many failures."""
        now = self.ctx.clock()
        counted = _throttled_as(address)
        refused = self._throttled(name, counted, now)
        if refused:
            minutes = int(THROTTLE_WINDOW.total_seconds() // 60)
            _login_refused(self.ctx, name, address, f"throttled: too many failed log-ins {refused}")
            raise Throttled(
                f"too many failed log-ins; try again in {minutes} minutes",
                int(THROTTLE_WINDOW.total_seconds()),
            )
        found = self.repo.user_password_hash(name)
        from argon2.exceptions import InvalidHashError, VerificationError

        ok = False
        try:
            ok = self._hasher.verify(found[1] if found else self._nobody, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or found is None or not found[0].enabled:
            self.repo.add_login_failure(name, counted, now)
            _login_refused(self.ctx, name, address, "wrong user name or password, or disabled")
            raise NotAuthenticated("wrong user name or password, or the user is disabled")
        user, stored = found
        self.repo.clear_login_failures(name, counted)
        if self._hasher.check_needs_rehash(stored):
            self.repo.rehash_password(user.id, self._hasher.hash(password))
        secret = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        self.repo.add_session(
            secret_digest(secret), user.id, csrf, address, now, now + SESSION_IDLE
        )
        audit.act_as(ActorKind.USER, user.name)  # this request is the user's from now on
        # Named outright (a request's actor is the same): `_throttled` reads this record to
        # know the address, called inside a request or not.
        audit.record(
            self.ctx,
            "user.login",
            "user",
            user.name,
            {"address": address},
            actor=Actor(ActorKind.USER, user.name, address),
        )
        return NewSession(secret=secret, csrf_token=csrf, user=user)

    def _throttled(self, name: str, counted: str, now: datetime) -> str | None:
        """Why a log-in as `name` from `counted` (`_throttled_as`) waits now (the end of
        the audit log's reason), or None: see the module's docstring."""
        failed = self.repo.login_failures_since(
            now - THROTTLE_WINDOW, user_name=name, address=counted
        )
        if failed.by_address >= FAILURES_PER_ADDRESS:
            return "from this address"
        if failed.by_user < FAILURES_PER_USER:  # so fewer from this address too
            return None
        known = counted == LOOPBACK or self.repo.logged_in_from(
            name, counted, now - KNOWN_ADDRESS_FOR
        )
        if not known:
            return "for this user"
        if failed.by_user_at_address >= FAILURES_PER_USER:
            return "for this user from this address"
        return None

    def session(self, secret: str) -> Session:
        """The session a cookie names; NotAuthenticated when it ended."""
        now = self.ctx.clock()
        found = self.repo.get_session(secret_digest(secret))
        if found is None or found.expires_at <= now or not found.user.enabled:
            raise NotAuthenticated("not logged in, or the session ended; log in again")
        if now - found.last_seen_at >= SESSION_TOUCH:
            # Best effort: a store full for a while must not log everyone out of reading.
            with contextlib.suppress(StoreFull):
                self.repo.extend_session(secret_digest(secret), now, now + SESSION_IDLE)
        user = found.user
        principal = Principal(name=user.name, role=user.role, user_id=user.id)
        return Session(principal=principal, csrf_token=found.csrf_token)

    def logout(self, secret: str) -> None:
        self.repo.delete_session(secret_digest(secret))

    # -- API tokens ----------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        role: Role,
        names: Sequence[str] = (),
        expires_days: float | None = None,
        created_by: str | None = None,
        by: Principal | None = None,
    ) -> tuple[ApiToken, str]:
        """A new token and its secret, which is shown once and stored only hashed; never
        broader than `by`, the caller making it (role and names), and never a
        name-limited admin (`token_role`)."""
        name = name.strip()
        if not name or len(name) > 200:
            raise UsageError("a token needs a --name of 1 to 200 characters, to tell it apart")
        patterns = parse_name_patterns(names)
        if role is Role.ADMIN and patterns:
            raise UsageError(
                "an admin token cannot be limited to names: what only admins do (users, "
                "tokens, clients, targets, settings) has no names; give an operator or "
                "viewer token the names"
            )
        wider = None if by is None else broader_than(by, role, patterns)
        if wider is not None:
            raise AccessDenied(f"a token is made no broader than its maker: {wider}")
        if expires_days is not None and not 0 < expires_days <= 3650:
            raise UsageError("--expires-days takes a number of days from 1 to 3650")
        now = self.ctx.clock()
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = self.repo.add_token(
            name=name,
            role=role,
            token_hash=secret_digest(secret),
            prefix=secret[: len(TOKEN_PREFIX) + 6],
            names=patterns,
            created_by=created_by,
            expires_at=None if expires_days is None else now + timedelta(days=expires_days),
            now=now,
        )
        audit.record(
            self.ctx,
            "token.create",
            "token",
            token.id,
            {
                "name": token.name,
                "role": role.value,
                "names": patterns,
                "expires_at": token.expires_at,
                "prefix": token.prefix,
            },
            secrets=[secret],
        )
        return token, secret

    def tokens(self) -> list[ApiToken]:
        return self.repo.list_tokens()

    def revoke_token(self, token_id: int) -> ApiToken:
        token = self.repo.revoke_token(token_id, self.ctx.clock())
        audit.record(
            self.ctx,
            "token.revoke",
            "token",
            token.id,
            {"name": token.name, "prefix": token.prefix},
        )
        return token

    def authenticate_token(self, secret: str, address: str) -> Principal:
        now = self.ctx.clock()
        token = self.repo.token_by_hash(secret_digest(secret)) if secret else None
        if token is None:
            raise NotAuthenticated("unknown API token; create one with `certbroker token create`")
        if token.revoked_at is not None:
            raise NotAuthenticated(f"API token {token.name!r} was revoked")
        if not token.usable(now):
            raise NotAuthenticated(f"API token {token.name!r} expired; create a new one")
        with contextlib.suppress(StoreFull):  # its last use is a note: reading goes on
            self.repo.touch_token(token, now, address)
        return Principal(
            name=token.name,
            role=token_role(token.role, token.names),
            names=token.names,
            token_id=token.id,
        )

    # -- what a caller may do ------------------------------------------------------------

    @staticmethod
    def require(principal: Principal, action: Action) -> None:
        require(principal, action)

    @staticmethod
    def require_names(principal: Principal, names: Sequence[str]) -> None:
        if not principal.may_see(names):
            raise AccessDenied(
                f"token {principal.name!r} is limited to {', '.join(principal.names)}; "
                f"{', '.join(names)} is outside that"
            )

    # -- Idempotency-Key -----------------------------------------------------------------

    def claim_idempotency_key(
        self, principal: Principal, key: str, request_hash: str
    ) -> StoredAnswer | None:
        if not 1 <= len(key) <= 255:
            raise UsageError("Idempotency-Key must be 1 to 255 characters")
        return self.repo.claim_idempotency_key(
            principal.key, key, request_hash, self.ctx.clock(), IDEMPOTENCY_KEEP, lease()
        )

    def keep_idempotent_answer(
        self, principal: Principal, key: str, status: int, body: str, location: str | None
    ) -> None:
        self.repo.keep_idempotent_answer(principal.key, key, status, body, location)

    def release_idempotency_key(self, principal: Principal, key: str) -> None:
        self.repo.release_idempotency_key(principal.key, key)


def _throttled_as(address: str) -> str:
    """The address failed log-ins are counted under: LOOPBACK for any address of the
    broker's own machine (127.0.0.0/8, ::1, ::ffff:127.x.y.z), which is one machine, so
    that cycling through its millions of addresses gives no new guesses; else itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # "unknown": no client address
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return LOOPBACK if ip.is_loopback else address


def _login_refused(ctx: ServiceContext, name: str, address: str, reason: str) -> None:
    """A failed log-in, into the audit log (never the password that was tried)."""
    audit.record(
        ctx,
        "user.login",
        "user",
        name,
        {"address": address, "reason": reason},
        outcome=Outcome.REFUSED,
    )
