"""Rate-limit budgets in the store: what was sent to each CA, per scope, and what the CA
said to leave alone until when.

`spend` decides and records in one write transaction: on SQLite that transaction holds
the database's write lock (BEGIN IMMEDIATE); on PostgreSQL it first takes a lock on
`budget_spends` that two such transactions cannot hold at once, so two nodes never both
see room for the last order of a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection

from certbroker.domain.budgets import Budget, opens_at
from certbroker.domain.models import EventKind, OrderState
from certbroker.store.base import StoreBase
from certbroker.store.events import add_event
from certbroker.store.schema import budget_blocks, budget_spends, orders

_S = budget_spends.c
_B = budget_blocks.c
KEEP = timedelta(days=366)  # spends older than the longest window a budget may have


@dataclass(frozen=True)
class Check:
    """One scope an order counts against, and its budget (None: counted, not limited).
    `issued_only`: count orders that did not fail (certificates, not requests);
    `exempt`: counted, but never held back by it (a renewal under the domain limit)."""

    scope: str
    budget: Budget | None
    issued_only: bool = False
    exempt: bool = False


@dataclass(frozen=True)
class Held:
    """Why an order may not go out yet, and until when."""

    until: datetime
    scope: str
    budget: Budget | None  # None: the CA's own rateLimited answer
    used: int
    reason: str = ""


@dataclass(frozen=True)
class ScopeUse:
    ca: str
    scope: str
    used: int
    newest: datetime


@dataclass(frozen=True)
class Block:
    ca: str
    scope: str
    until: datetime
    reason: str


class BudgetStore(StoreBase):
    def spend_budget(
        self, ca: str, checks: Sequence[Check], order_id: int, now: datetime
    ) -> Held | None:
        """Record one new order against every scope in `checks`, unless one of them has
        no room (or the CA holds it): then record nothing and say until when."""
        scopes = [c.scope for c in checks]
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE budget_spends IN SHARE ROW EXCLUSIVE MODE"))
            held = self._blocked(conn, ca, scopes, now)
            for check in checks:
                if held is None and check.budget is not None and not check.exempt:
                    times = self._spent(conn, ca, check, now - check.budget.window)
                    until = opens_at(times, now, check.budget)
                    if until is not None:
                        held = Held(until, check.scope, check.budget, len(times))
            if held is not None:
                return held
            conn.execute(
                insert(budget_spends),
                [{"ca": ca, "scope": s, "at": now, "order_id": order_id} for s in scopes],
            )
            if order_id % 1000 == 0:  # now and then, what no window reaches goes
                conn.execute(delete(budget_spends).where(_S.at < now - KEEP))
        return None

    def _blocked(self, conn: Connection, ca: str, scopes: list[str], now: datetime) -> Held | None:
        row = conn.execute(
            select(_B.scope, _B.until, _B.reason)
            .where(_B.ca == ca, _B.scope.in_(scopes), _B.until > now)
            .order_by(_B.until.desc())
            .limit(1)
        ).first()
        return None if row is None else Held(row.until, row.scope, None, 0, row.reason)

    def _spent(self, conn: Connection, ca: str, check: Check, since: datetime) -> list[datetime]:
        query = select(_S.at, _S.order_id).where(
            _S.ca == ca, _S.scope == check.scope, _S.at > since
        )
        if not check.issued_only:
            return [row.at for row in conn.execute(query)]
        # Certificates: an order counts once (its first request), and not when it failed.
        query = query.outerjoin(orders, orders.c.id == _S.order_id).where(
            or_(orders.c.state.is_(None), orders.c.state != OrderState.FAILED.value)
        )
        first: dict[int | None, datetime] = {}
        spent: list[datetime] = []
        for row in conn.execute(query):
            if row.order_id is None:
                spent.append(row.at)
            elif row.order_id not in first or row.at < first[row.order_id]:
                first[row.order_id] = row.at
        return spent + list(first.values())

    def block_budget(
        self, ca: str, scopes: Sequence[str], now: datetime, until: datetime, reason: str,
        message: str, cert_id: int | None,
    ) -> None:  # fmt: skip
        """The CA said rateLimited: hold each scope until `until` (its latest word counts),
        with an event that says so."""
        with self._write() as conn:
            for scope in scopes:
                changed = conn.execute(
                    update(budget_blocks)
                    .where(_B.ca == ca, _B.scope == scope)
                    .values(until=until, reason=reason)
                ).rowcount
                if not changed:
                    conn.execute(
                        insert(budget_blocks).values(ca=ca, scope=scope, until=until, reason=reason)
                    )
            add_event(conn, now, EventKind.HELD_BACK, message, cert_id=cert_id)

    def budget_use(self, since: datetime, now: datetime) -> list[ScopeUse]:
        """Orders sent per CA and scope since `since`, busiest first."""
        with self._read() as conn:
            rows = conn.execute(
                select(_S.ca, _S.scope, func.count().label("used"), func.max(_S.at).label("newest"))
                .where(_S.at > since)
                .group_by(_S.ca, _S.scope)
                .order_by(func.count().desc())
            ).all()
        return [ScopeUse(r.ca, r.scope, int(r.used), r.newest) for r in rows]

    def budget_blocks_now(self, now: datetime) -> list[Block]:
        with self._read() as conn:
            rows = conn.execute(
                select(_B.ca, _B.scope, _B.until, _B.reason).where(_B.until > now)
            ).all()
        return [Block(r.ca, r.scope, r.until, r.reason) for r in rows]

    def budget_times(self, ca: str, check: Check, since: datetime) -> list[datetime]:
        with self._read() as conn:
            return self._spent(conn, ca, check, since)
