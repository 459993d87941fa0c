"""What every part of the repository shares: the engine, transactions, leases."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, Update, and_, bindparam, select, update

from certbroker.domain.errors import LeaseLost
from certbroker.store.db import write_lock
from certbroker.store.schema import orders
from certbroker.store.space import watch_space

# Statements on the path of every certificate are built once, here and in the repository:
# building one (SQLAlchemy's coercions) and computing its cache key cost more than running
# it, about 0.2 ms of CPU each, and an issuance runs about 30 (bench/issuance.py).
LEASE_HOLDER = select(orders.c.lease_owner).where(orders.c.id == bindparam("b_id"))


@functools.cache
def held_update(columns: tuple[str, ...]) -> Update:
    """UPDATE orders SET updated_at, lease_until, <columns> WHERE id = :b_id AND
    lease_owner = :b_owner, built once per set of columns; each value is bound as
    `v_<column>`. A name that is no column fails when the statement is first compiled."""
    return (
        update(orders)
        .where(and_(orders.c.id == bindparam("b_id"), orders.c.lease_owner == bindparam("b_owner")))
        .values({c: bindparam(f"v_{c}") for c in ("updated_at", "lease_until", *columns)})
    )


class StoreBase:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = write_lock(engine)
        self.space = watch_space(engine)  # a full disk: StoreFull, and since when

    def _read(self) -> Any:
        return self.engine.connect().execution_options(readonly=True)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; threads of this process take turns (see `write_lock`).
        One the store refused for lack of space is rolled back whole and raises
        StoreFull (store/space.py); while writes are being refused, one that commits
        has the store looked at for room again (`settle`)."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn
        self.space.settle()  # the usual case: one look

    def _claim_next_due(self, table: Table, due: Any, values: Mapping[str, Any]) -> int | None:
        """Take the next due row of `table` (deployments, webhook deliveries), the one
        with the soonest `next_try_at`, setting `values` (its lease), in one statement:
        PostgreSQL skips rows another claim has locked; SQLite runs one writer at a time.
        Its ID, or None when nothing is due."""
        candidate = (
            select(table.c.id)
            .where(due)
            .order_by(table.c.next_try_at, table.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with self._write() as conn:
            row = conn.execute(
                update(table)
                .where(and_(table.c.id == candidate.scalar_subquery(), due))
                .values(**values)
                .returning(table.c.id)
            ).first()
        return None if row is None else int(row.id)

    def _check_lease(self, conn: Any, order_id: int, owner: str) -> None:
        holder = conn.execute(LEASE_HOLDER, {"b_id": order_id}).scalar_one_or_none()
        if holder != owner:
            raise LeaseLost(f"order {order_id} is now held by {holder}")

    def _update_held(
        self,
        conn: Connection,
        order_id: int,
        owner: str,
        now: datetime,
        lease_until: datetime | None,
        values: Mapping[str, Any],
    ) -> None:
        """One step of an order under `owner`'s lease (None for `lease_until` lets the
        lease go, with `lease_owner` set to None in `values`); LeaseLost when another
        worker holds the order now."""
        params = {"b_id": order_id, "b_owner": owner, "v_updated_at": now}
        params["v_lease_until"] = lease_until
        params.update({f"v_{name}": value for name, value in values.items()})
        done = conn.execute(held_update(tuple(values)), params)
        if not done.rowcount:
            self._check_lease(conn, order_id, owner)  # raises LeaseLost, naming the holder
            raise LeaseLost(f"order {order_id} is gone")
