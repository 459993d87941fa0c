"""What `/metrics` reports, read from the store at each scrape, so every node reports the
same values."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy import Row, func, select

from certbroker.domain.models import ACTIVE_ORDER_STATES, EventKind
from certbroker.store.base import StoreBase
from certbroker.store.schema import certificates, deployments, events, installations, orders


class MetricsStore(StoreBase):
    def metric_certificates(self) -> list[Row[Any]]:
        """id, names (JSON), status, not_after, renew_at, alarm_since of every certificate."""
        c = certificates.c
        with self._read() as conn:
            return list(
                conn.execute(
                    select(
                        c.id, c.names, c.status, c.not_after, c.renew_at, c.alarm_since
                    ).order_by(c.id)
                )
            )

    def metric_orders(self) -> list[tuple[str, str, int]]:
        """(purpose, final state, how many) of the orders that ended."""
        o = orders.c
        with self._read() as conn:
            rows = conn.execute(
                select(o.purpose, o.state, func.count())
                .where(o.state.not_in(ACTIVE_ORDER_STATES))
                .group_by(o.purpose, o.state)
            )
            return [(r[0], r[1], int(r[2])) for r in rows]

    def metric_failures(self) -> Counter[str]:
        """Failed attempts by the CA's problem type ("none" without one)."""
        kinds = (EventKind.ATTEMPT_FAILED.value, EventKind.FAILED.value)
        found: Counter[str] = Counter()
        with self._read() as conn:
            for (problem,) in conn.execute(
                select(events.c.problem).where(events.c.kind.in_(kinds))
            ):
                kind = "none"
                if problem:
                    try:
                        kind = str(json.loads(problem).get("type") or "none")
                    except (ValueError, AttributeError):
                        kind = "unreadable"
                found[kind.removeprefix("urn:ietf:params:acme:error:")] += 1
        return found

    def metric_queue_depth(self) -> int:
        """Orders waiting or under way."""
        with self._read() as conn:
            count = conn.execute(
                select(func.count()).where(orders.c.state.in_(ACTIVE_ORDER_STATES))
            ).scalar()
        return int(count or 0)

    def metric_alarms(self) -> int:
        """Active alarms: failing certificates, push deployments, agents' installs."""
        with self._read() as conn:
            total = 0
            for table in (certificates, deployments, installations):
                total += int(
                    conn.execute(
                        select(func.count()).where(table.c.alarm_since.is_not(None))
                    ).scalar()
                    or 0
                )
        return total
