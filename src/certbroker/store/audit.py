"""The audit log in the store: appended to, read, never changed.

There is no update or delete here on purpose; the triggers of migration 0021 refuse both
to anyone else as well."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select

from certbroker.domain.audit import Actor, ActorKind, AuditEntry, AuditQuery, Outcome
from certbroker.store.base import StoreBase
from certbroker.store.schema import audit_log


def _entry(row: Row[Any]) -> AuditEntry:
    try:
        details = json.loads(row.details) if row.details else {}
    except ValueError:
        details = {"unreadable": row.details}
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor_kind=ActorKind(row.actor_kind),
        actor=row.actor,
        address=row.address,
        action=row.action,
        object_type=row.object_type,
        object_id=row.object_id,
        outcome=Outcome(row.outcome),
        details=details if isinstance(details, dict) else {"value": details},
    )


def _prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class AuditStore(StoreBase):
    def add_audit(
        self,
        *,
        at: datetime,
        actor: Actor,
        action: str,
        object_type: str | None,
        object_id: str | None,
        outcome: Outcome,
        details: dict[str, Any],
    ) -> int:
        """Append one record (its details already free of secrets); its ID."""
        with self._write() as conn:
            result = conn.execute(
                insert(audit_log).values(
                    at=at,
                    actor_kind=actor.kind.value,
                    actor=actor.name[:200],
                    address=actor.address[:100] if actor.address else None,
                    action=action[:100],
                    object_type=object_type[:50] if object_type else None,
                    object_id=object_id[:200] if object_id else None,
                    outcome=outcome.value,
                    details=json.dumps(details, default=str, sort_keys=True),
                )
            )
            key = result.inserted_primary_key
            return int(key[0]) if key else 0

    def audit_entries(
        self, query: AuditQuery, limit: int, *, newest_first: bool
    ) -> list[AuditEntry]:
        """Records matching `query`: the newest `limit` of them, newest first or (with
        `newest_first` False) oldest first."""
        c = audit_log.c
        where = []
        if query.since is not None:
            where.append(c.at >= query.since)
        if query.actor:
            where.append(c.actor == query.actor)
        if query.action:
            where.append(c.action.like(_prefix(query.action), escape="\\"))
        if query.outcome is not None:
            where.append(c.outcome == query.outcome.value)
        if query.before_id is not None:
            where.append(c.id < query.before_id)
        statement = select(audit_log).where(*where).order_by(c.id.desc()).limit(limit)
        with self._read() as conn:
            found = [_entry(r) for r in conn.execute(statement)]
        return found if newest_first else found[::-1]
