"""What every part of the repository shares: the engine, transactions, leases."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, select, update

from certbroker.store.db import write_lock
from certbroker.store.schema import orders

# Statements on the path of every certificate are built once, here and in the repository:
# building one (SQLAlchemy's coercions) and computing its cache key cost more than running
# it, about 0.2 ms of CPU each, and an issuance runs about 30 (bench/issuance.py).
LEASE_HOLDER = select(orders.c.lease_owner).where(orders.c.id == bindparam("b_id"))
# The SET clause comes from the parameters' names (updated_at, lease_until, state, ...);
# SQLAlchemy ignores a name that is no column, so `_advance` checks them.
ADVANCE_HELD = update(orders).where(
    and_(orders.c.id == bindparam("b_id"), orders.c.lease_owner == bindparam("b_owner"))
)
ORDER_COLUMNS = frozenset(orders.c.keys())


class LeaseLost(Exception):
    """Another worker holds this order now; the current holder must stop touching it."""


class StoreBase:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = write_lock(engine)

    def _read(self) -> Any:
        return self.engine.connect().execution_options(readonly=True)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; threads of this process take turns (see `write_lock`)."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    def _check_lease(self, conn: Any, order_id: int, owner: str) -> None:
        holder = conn.execute(LEASE_HOLDER, {"b_id": order_id}).scalar_one_or_none()
        if holder != owner:
            raise LeaseLost(f"order {order_id} is now held by {holder}")

    def _advance(
        self,
        conn: Connection,
        order_id: int,
        owner: str,
        now: datetime,
        lease_until: datetime | None,
        values: dict[str, Any],
    ) -> None:
        unknown = values.keys() - ORDER_COLUMNS
        if unknown:
            raise TypeError(f"orders has no column {', '.join(sorted(unknown))}")
        done = conn.execute(
            ADVANCE_HELD,
            {"b_id": order_id, "b_owner": owner, "updated_at": now, "lease_until": lease_until}
            | values,
        )
        if not done.rowcount:
            self._check_lease(conn, order_id, owner)  # raises LeaseLost, naming the holder
            raise LeaseLost(f"order {order_id} is gone")
