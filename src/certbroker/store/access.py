"""Users, API tokens, console sessions, failed log-ins (and the addresses a user logged in
from) and Idempotency-Key answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.access import ApiToken, Role, User
from certbroker.domain.errors import NotFoundError, UsageError
from certbroker.store.base import StoreBase
from certbroker.store.rows import new_id
from certbroker.store.schema import (
    api_tokens,
    audit_log,
    idempotency_keys,
    login_failures,
    sessions,
    users,
)

# A token's last use is written at most this often: a write per API request would make
# every read a write.
TOKEN_TOUCH = timedelta(seconds=60)


def _user(row: Row[Any]) -> User:
    return User(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        enabled=bool(row.enabled),
        created_at=row.created_at,
        password_changed_at=row.password_changed_at,
    )


def _token(row: Row[Any]) -> ApiToken:
    return ApiToken(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        names=tuple(json.loads(row.names)),
        prefix=row.prefix,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        last_used_from=row.last_used_from,
    )


@dataclass(frozen=True)
class StoredSession:
    user: User
    csrf_token: str
    expires_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class LoginFailures:
    """Failed log-ins within a window."""

    by_user: int  # for this user name, from any address
    by_address: int  # from this address, for any user name
    by_user_at_address: int  # for this user name from this address


@dataclass(frozen=True)
class StoredAnswer:
    """The answer kept for an Idempotency-Key; `status_code` None while the first runs."""

    request_hash: str
    status_code: int | None
    body: str | None
    location: str | None
    # The first request's process died after doing this ("certificate:ID:ORDER"): answer
    # it, do not do it again.
    work_done: str | None = None


def mark_idempotent_work(conn: Connection, holder: tuple[str, str], done: str) -> None:
    """Inside the transaction doing the work: what was done for the request holding this
    (owner, Idempotency-Key)."""
    k = idempotency_keys.c
    conn.execute(
        update(idempotency_keys)
        .where(and_(k.owner == holder[0], k.key == holder[1]))
        .values(work_done=done)
    )


class AccessStore(StoreBase):
    # -- users ---------------------------------------------------------------------------

    def add_user(self, name: str, role: Role, password_hash: str, now: datetime) -> User:
        try:
            with self._write() as conn:
                user_id = new_id(
                    conn.execute(
                        insert(users).values(
                            name=name,
                            role=role.value,
                            password_hash=password_hash,
                            enabled=True,
                            created_at=now,
                            updated_at=now,
                            password_changed_at=now,
                        )
                    )
                )
        except IntegrityError:
            raise UsageError(f"a user named {name!r} already exists") from None
        return self.get_user(user_id)

    def count_users(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    def get_user(self, ref: str | int) -> User:
        column = users.c.id if isinstance(ref, int) else users.c.name
        with self._read() as conn:
            row = conn.execute(select(users).where(column == ref)).first()
        if row is None:
            raise NotFoundError(f"no user {ref!r}; see `certbroker user list`")
        return _user(row)

    def user_password_hash(self, name: str) -> tuple[User, str] | None:
        with self._read() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        return None if row is None else (_user(row), row.password_hash)

    def list_users(self) -> list[User]:
        with self._read() as conn:
            return [_user(r) for r in conn.execute(select(users).order_by(users.c.id))]

    def set_password(self, user_id: int, password_hash: str, now: datetime) -> None:
        """A new password; every session of the user ends with the old one."""
        with self._write() as conn:
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(password_hash=password_hash, password_changed_at=now, updated_at=now)
            )
            conn.execute(delete(sessions).where(sessions.c.user_id == user_id))

    def rehash_password(self, user_id: int, password_hash: str) -> None:
        """The same password under newer hashing parameters."""
        with self._write() as conn:
            conn.execute(
                update(users).where(users.c.id == user_id).values(password_hash=password_hash)
            )

    def change_user(
        self,
        user_id: int,
        now: datetime,
        *,
        role: Role | None = None,
        enabled: bool | None = None,
        delete_it: bool = False,
    ) -> None:
        """Change a user's role or enabled flag, or delete the user, refusing to leave no
        enabled admin; a disabled or deleted user's sessions end."""
        with self._write() as conn:
            row = conn.execute(select(users).where(users.c.id == user_id)).first()
            if row is None:
                raise NotFoundError(f"no user with ID {user_id}; see `certbroker user list`")
            was_admin = row.role == Role.ADMIN.value and bool(row.enabled)
            stays_admin = (
                not delete_it
                and (role or Role(row.role)) is Role.ADMIN
                and (enabled if enabled is not None else bool(row.enabled))
            )
            if was_admin and not stays_admin and _enabled_admins(conn) <= 1:
                raise UsageError(
                    f"{row.name!r} is the last enabled admin; make another user admin first"
                )
            if delete_it:
                conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
                conn.execute(delete(users).where(users.c.id == user_id))
                return
            values: dict[str, Any] = {"updated_at": now}
            if role is not None:
                values["role"] = role.value
            if enabled is not None:
                values["enabled"] = enabled
            conn.execute(update(users).where(users.c.id == user_id).values(values))
            if enabled is False:
                conn.execute(delete(sessions).where(sessions.c.user_id == user_id))

    # -- API tokens ----------------------------------------------------------------------

    def add_token(
        self,
        *,
        name: str,
        role: Role,
        token_hash: str,
        prefix: str,
        names: Sequence[str],
        created_by: str | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> ApiToken:
        with self._write() as conn:
            token_id = new_id(
                conn.execute(
                    insert(api_tokens).values(
                        name=name,
                        role=role.value,
                        token_hash=token_hash,
                        prefix=prefix,
                        names=json.dumps(list(names)),
                        created_by=created_by,
                        created_at=now,
                        expires_at=expires_at,
                    )
                )
            )
        return self.get_token(token_id)

    def get_token(self, token_id: int) -> ApiToken:
        with self._read() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()
        if row is None:
            raise NotFoundError(f"no API token with ID {token_id}; see `certbroker token list`")
        return _token(row)

    def token_by_hash(self, token_hash: str) -> ApiToken | None:
        with self._read() as conn:
            row = conn.execute(
                select(api_tokens).where(api_tokens.c.token_hash == token_hash)
            ).first()
        return None if row is None else _token(row)

    def list_tokens(self) -> list[ApiToken]:
        with self._read() as conn:
            return [_token(r) for r in conn.execute(select(api_tokens).order_by(api_tokens.c.id))]

    def touch_token(self, token: ApiToken, now: datetime, address: str) -> None:
        if (
            token.last_used_at is not None
            and now - token.last_used_at < TOKEN_TOUCH
            and token.last_used_from == address
        ):
            return
        with self._write() as conn:
            conn.execute(
                update(api_tokens)
                .where(api_tokens.c.id == token.id)
                .values(last_used_at=now, last_used_from=address[:100])
            )

    def revoke_token(self, token_id: int, now: datetime) -> ApiToken:
        token = self.get_token(token_id)
        if token.revoked_at is None:
            with self._write() as conn:
                conn.execute(
                    update(api_tokens).where(api_tokens.c.id == token_id).values(revoked_at=now)
                )
        return self.get_token(token_id)

    # -- console sessions ----------------------------------------------------------------

    def add_session(
        self,
        id_hash: str,
        user_id: int,
        csrf_token: str,
        address: str,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        with self._write() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at < now))
            conn.execute(
                insert(sessions).values(
                    id_hash=id_hash,
                    user_id=user_id,
                    csrf_token=csrf_token,
                    address=address[:100],
                    created_at=now,
                    last_seen_at=now,
                    expires_at=expires_at,
                )
            )

    def get_session(self, id_hash: str) -> StoredSession | None:
        with self._read() as conn:
            row = conn.execute(
                select(sessions, users)
                .join(users, users.c.id == sessions.c.user_id)
                .where(sessions.c.id_hash == id_hash)
            ).first()
        if row is None:
            return None
        return StoredSession(
            user=_user(row),
            csrf_token=row.csrf_token,
            expires_at=row.expires_at,
            last_seen_at=row.last_seen_at,
        )

    def extend_session(self, id_hash: str, now: datetime, expires_at: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                update(sessions)
                .where(sessions.c.id_hash == id_hash)
                .values(last_seen_at=now, expires_at=expires_at)
            )

    def delete_session(self, id_hash: str) -> None:
        with self._write() as conn:
            conn.execute(delete(sessions).where(sessions.c.id_hash == id_hash))

    # -- failed log-ins ------------------------------------------------------------------

    def add_login_failure(self, user_name: str, address: str, now: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                insert(login_failures).values(
                    user_name=user_name[:100], address=address[:100], at=now
                )
            )
            # Forget what no throttle looks at any more.
            conn.execute(
                delete(login_failures).where(login_failures.c.at < now - timedelta(days=1))
            )

    def login_failures_since(
        self, since: datetime, *, user_name: str, address: str
    ) -> LoginFailures:
        """Failed log-ins since `since` for this user name, from this address, and for
        this user name from this address."""
        f = login_failures.c
        user_name, address = user_name[:100], address[:100]
        here = func.coalesce(func.sum(case((f.address == address, 1), else_=0)), 0)
        with self._read() as conn:
            by_user, by_user_here = conn.execute(
                select(func.count(), here).where(and_(f.user_name == user_name, f.at >= since))
            ).one()
            by_address = conn.execute(
                select(func.count()).where(and_(f.address == address, f.at >= since))
            ).scalar_one()
        return LoginFailures(int(by_user), int(by_address), int(by_user_here))

    def clear_login_failures(self, user_name: str, address: str) -> None:
        """Forget the failures of this user name from this address (only: those from
        elsewhere, perhaps someone else's guesses, still count)."""
        f = login_failures.c
        with self._write() as conn:
            conn.execute(
                delete(login_failures).where(
                    and_(f.user_name == user_name[:100], f.address == address[:100])
                )
            )

    def logged_in_from(self, user_name: str, address: str, since: datetime) -> bool:
        """Whether the user logged in successfully from `address` since `since`, as the
        audit log says (`AccessService.login` records each log-in with the user as the
        actor and the address it came from; the log is append-only, so nobody makes an
        address known but by logging in from it)."""
        a = audit_log.c
        with self._read() as conn:
            found = conn.execute(
                select(a.id)
                .where(
                    and_(
                        a.actor == user_name[:200],  # ix_audit_log_actor
                        a.actor_kind == "user",
                        a.action == "user.login",
                        a.outcome == "ok",
                        a.address == address[:100],
                        a.at >= since,
                    )
                )
                .limit(1)
            ).first()
        return found is not None

    # -- Idempotency-Key -----------------------------------------------------------------

    def claim_idempotency_key(
        self,
        owner: str,
        key: str,
        request_hash: str,
        now: datetime,
        keep: timedelta,
        abandoned_after: timedelta,
    ) -> StoredAnswer | None:
        """None: the key is new and now held for this request; else what is kept for it.
        A key held `abandoned_after` without an answer (the process or node working on it
        died) is taken over by this request, for the same request only."""
        k = idempotency_keys.c
        try:
            with self._write() as conn:
                conn.execute(delete(idempotency_keys).where(k.created_at < now - keep))
                conn.execute(
                    insert(idempotency_keys).values(
                        owner=owner, key=key, request_hash=request_hash, created_at=now
                    )
                )
            return None
        except IntegrityError:
            pass
        with self._read() as conn:
            row = conn.execute(
                select(idempotency_keys).where(and_(k.owner == owner, k.key == key))
            ).first()
        if row is None:  # it went away in between: let this request do the work
            return self.claim_idempotency_key(owner, key, request_hash, now, keep, abandoned_after)
        abandoned = (
            row.status_code is None
            and row.request_hash == request_hash
            and row.created_at <= now - abandoned_after
        )
        if abandoned and row.work_done:  # done, only its answer was lost
            return StoredAnswer(row.request_hash, None, None, None, row.work_done)
        if abandoned:
            with self._write() as conn:  # the first to change it takes it over
                taken = conn.execute(
                    update(idempotency_keys)
                    .where(
                        and_(
                            k.owner == owner,
                            k.key == key,
                            k.status_code.is_(None),
                            k.created_at == row.created_at,
                        )
                    )
                    .values(created_at=now)
                ).rowcount
            if taken:
                return None
        return StoredAnswer(row.request_hash, row.status_code, row.body, row.location)

    def keep_idempotent_answer(
        self, owner: str, key: str, status_code: int, body: str, location: str | None
    ) -> None:
        k = idempotency_keys.c
        with self._write() as conn:
            conn.execute(
                update(idempotency_keys)
                .where(and_(k.owner == owner, k.key == key))
                .values(status_code=status_code, body=body, location=location)
            )

    def release_idempotency_key(self, owner: str, key: str) -> None:
        k = idempotency_keys.c
        with self._write() as conn:
            conn.execute(delete(idempotency_keys).where(and_(k.owner == owner, k.key == key)))


def _enabled_admins(conn: Connection) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(users)
            .where(and_(users.c.role == Role.ADMIN.value, users.c.enabled.is_(True)))
        ).scalar_one()
    )
