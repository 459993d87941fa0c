"""Events and alarms in the store.

Events are written in the same transaction as the change they describe (a failed
attempt, an issuance), so the record never disagrees with the state. An alarm lives on
its certificate: raised by the first failed attempt, kept while attempts keep failing
(its message is the latest error), cleared by the next success.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from certbroker.domain.errors import AcmeProblem
from certbroker.domain.models import Certificate, Event, EventKind, OrderState
from certbroker.store.base import StoreBase
from certbroker.store.rows import CERT_COLUMNS, certificate_row
from certbroker.store.schema import certificates, events, orders, validation_failures


def add_event(
    conn: Connection,
    now: datetime,
    kind: EventKind,
    message: str,
    *,
    cert_id: int | None = None,
    order_id: int | None = None,
    problem: AcmeProblem | None = None,
) -> None:
    conn.execute(
        insert(events).values(
            at=now,
            kind=kind.value,
            message=message,
            certificate_id=cert_id,
            order_id=order_id,
            problem=json.dumps(problem.to_json()) if problem else None,
        )
    )


def failed_attempt(
    conn: Connection,
    now: datetime,
    cert_id: int,
    order_id: int,
    message: str,
    problem: AcmeProblem | None,
    *,
    final: bool,
    kind: str | None = None,
) -> None:
    """The event for a failed attempt, and the certificate's alarm raised or updated.
    `kind`: what the alarm is about when no CA problem says it (`failure_kind`)."""
    row = conn.execute(
        select(
            certificates.c.challenge, certificates.c.alarm_since, certificates.c.account_id
        ).where(certificates.c.id == cert_id)
    ).one()
    failed = list(dict.fromkeys(p.identifier for p in _with_subproblems(problem) if p.identifier))
    if failed:  # a validation failed: name the challenge and the names, and count them
        message = f"{message} [{row.challenge} challenge for {', '.join(failed)}]"
        conn.execute(
            insert(validation_failures),
            [{"account_id": row.account_id, "name": name, "at": now} for name in failed],
        )
    event = EventKind.FAILED if final else EventKind.ATTEMPT_FAILED
    add_event(conn, now, event, message, cert_id=cert_id, order_id=order_id, problem=problem)
    raise_alarm(
        conn,
        now,
        cert_id,
        order_id,
        message,
        already=row.alarm_since is not None,
        kind=kind or failure_kind(problem),
        problem=problem,
    )


def failure_kind(problem: AcmeProblem | None) -> str:
    """What kind of failure an alarm is about: the CA's problem type (of the first
    subproblem when it names one), else "error". An acknowledged alarm stays muted while
    failures keep this kind."""
    if problem is None:
        return "error"
    for found in _with_subproblems(problem)[1:]:
        if found.type:
            return found.type
    return problem.type or "error"


def raise_alarm(
    conn: Connection,
    now: datetime,
    cert_id: int,
    order_id: int,
    message: str,
    *,
    already: bool,
    kind: str = "error",
    problem: AcmeProblem | None = None,
) -> None:
    """The certificate's alarm raised (with its event), or its message updated. An
    acknowledged alarm is raised again (the acknowledgement gone) by a new kind of failure."""
    values: dict[str, Any] = {"alarm_message": message, "alarm_kind": kind}
    if not already:
        values.update(alarm_since=now, alarm_ack_until=None, alarm_ack_by=None)
        values["alarm_ack_reason"] = None
        add_event(
            conn, now, EventKind.ALARM_RAISED, message,
            cert_id=cert_id, order_id=order_id, problem=problem,
        )  # fmt: skip
    else:
        acked = conn.execute(
            select(certificates.c.alarm_kind, certificates.c.alarm_ack_until).where(
                certificates.c.id == cert_id
            )
        ).one()
        if acked.alarm_ack_until is not None and acked.alarm_kind != kind:
            values.update(alarm_ack_until=None, alarm_ack_by=None, alarm_ack_reason=None)
            add_event(
                conn,
                now,
                EventKind.ALARM_RAISED,
                f"raised again, a new kind of failure ({kind}): {message}",
                cert_id=cert_id,
                order_id=order_id,
                problem=problem,
            )
    conn.execute(update(certificates).where(certificates.c.id == cert_id).values(values))


def succeeded(
    conn: Connection, now: datetime, cert_id: int, order_id: int, kind: EventKind, message: str
) -> None:
    """The event for an issuance or renewal, and the certificate's alarm cleared, saying
    how long it was failing and how many attempts failed meanwhile."""
    add_event(conn, now, kind, message, cert_id=cert_id, order_id=order_id)
    since = conn.execute(
        select(certificates.c.alarm_since).where(certificates.c.id == cert_id)
    ).scalar_one_or_none()
    if since is None:
        return
    conn.execute(
        update(certificates)
        .where(certificates.c.id == cert_id)
        .values(
            alarm_since=None,
            alarm_message=None,
            alarm_kind=None,
            alarm_ack_until=None,
            alarm_ack_by=None,
            alarm_ack_reason=None,
        )
    )
    failed = conn.execute(
        select(func.count())
        .select_from(orders)
        .where(
            and_(
                orders.c.certificate_id == cert_id,
                orders.c.state == OrderState.FAILED.value,
                orders.c.finished_at >= since,
            )
        )
    ).scalar_one()
    minutes = max(1, round((now - since).total_seconds() / 60))
    took = f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"
    add_event(
        conn,
        now,
        EventKind.ALARM_CLEARED,
        f"cleared: {message}; it was failing for {took}, {failed} attempt(s) failed meanwhile",
        cert_id=cert_id,
        order_id=order_id,
    )


def _with_subproblems(problem: AcmeProblem | None) -> list[AcmeProblem]:
    if problem is None:
        return []
    found = [problem]
    for sub in problem.subproblems:
        found += _with_subproblems(sub)
    return found


def event_row(r: Any) -> Event:
    return Event(
        id=r.id,
        at=r.at,
        kind=EventKind(r.kind),
        message=r.message,
        certificate_id=r.certificate_id,
        order_id=r.order_id,
        problem=AcmeProblem.from_json(json.loads(r.problem)) if r.problem else None,
    )


class EventStore(StoreBase):
    def list_events(
        self,
        *,
        cert_id: int | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events oldest first; with `limit`, the newest `limit` of them."""
        query = select(events)
        if cert_id is not None:
            query = query.where(events.c.certificate_id == cert_id)
        if since is not None:
            query = query.where(events.c.at >= since)
        if limit is not None:
            query = query.order_by(events.c.id.desc()).limit(limit)
        with self._read() as conn:
            rows = list(conn.execute(query))
        rows.sort(key=lambda r: r.id)
        return [event_row(r) for r in rows]

    def validation_failures_since(
        self, account_id: int, names: Iterable[str], since: datetime
    ) -> dict[str, list[datetime]]:
        v = validation_failures.c
        found: dict[str, list[datetime]] = {name: [] for name in names}
        with self._read() as conn:
            for row in conn.execute(
                select(v.name, v.at).where(
                    and_(v.account_id == account_id, v.name.in_(list(found)), v.at > since)
                )
            ):
                found[row.name].append(row.at)
        return found

    def certificates_in_alarm(self) -> list[Certificate]:
        with self._read() as conn:
            return [
                certificate_row(r)
                for r in conn.execute(
                    select(*CERT_COLUMNS)
                    .where(certificates.c.alarm_since.is_not(None))
                    .order_by(certificates.c.alarm_since, certificates.c.id)
                )
            ]
