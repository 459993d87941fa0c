"""Mail notifications in the store: expiry warnings (once per certificate, not-after and
threshold, whichever process looks first), the mail outbox fed from the events, alarm
acknowledgements, and the ACME request-duration histogram summed over every process.

The outbox reads the events after a cursor (`runtime_settings` row `mail-cursor`) and
inserts the mails they call for in the same transaction that moves the cursor; the unique
(event, recipient) index is the second guard. So each mail is queued once across
processes and nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.models import CertificateStatus, Event, EventKind
from certbroker.store.base import StoreBase
from certbroker.store.events import add_event, event_row
from certbroker.store.schema import (
    accounts,
    acme_request_stats,
    certificates,
    events,
    expiry_warnings,
    mail_deliveries,
    runtime_settings,
)

MAIL_CURSOR = "mail-cursor"
_M = mail_deliveries.c
_C = certificates.c


@dataclass(frozen=True)
class ExpiryCandidate:
    certificate_id: int
    names: tuple[str, ...]
    not_after: datetime
    warned: tuple[int, ...]  # thresholds already warned about for this not-after


@dataclass(frozen=True)
class MailItem:
    """One queued mail with what it is about."""

    delivery_id: int
    recipient: str
    attempts: int
    created_at: datetime
    event: Event | None
    names: tuple[str, ...] = ()
    label: str | None = None
    not_after: datetime | None = None


@dataclass(frozen=True)
class MailDelivery:
    id: int
    event_id: int | None
    recipient: str
    state: str
    attempts: int
    next_try_at: datetime | None
    last_error: str | None
    answer: str | None
    created_at: datetime
    sent_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "recipient": self.recipient,
            "state": self.state,
            "attempts": self.attempts,
            "next_try_at": self.next_try_at.isoformat() if self.next_try_at else None,
            "last_error": self.last_error,
            "answer": self.answer,
            "created_at": self.created_at.isoformat(),
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
        }


# (event, the certificate's own recipients, its account's contacts) -> [(recipient,
# state "queued" | "digest", when)]
Router = Callable[[Event, Sequence[str], Sequence[str]], list[tuple[str, str, datetime | None]]]


class NotifyStore(StoreBase):
    # -- expiry warnings -----------------------------------------------------------------

    def expiry_candidates(self, now: datetime, horizon: datetime) -> list[ExpiryCandidate]:
        """Valid certificates whose not-after is before `horizon` and still ahead, and that
        no newer valid certificate for the same names replaces."""
        with self._read() as conn:
            rows = list(
                conn.execute(
                    select(_C.id, _C.names, _C.not_after).where(
                        and_(
                            _C.status == CertificateStatus.VALID.value,
                            _C.not_after.is_not(None),
                            _C.not_after <= horizon,
                            _C.not_after > now,
                        )
                    )
                )
            )
            if not rows:
                return []
            # The latest not-after of a valid certificate for each of these names.
            latest: dict[str, datetime] = {
                names: not_after
                for names, not_after in conn.execute(
                    select(_C.names, func.max(_C.not_after))
                    .where(
                        and_(
                            _C.status == CertificateStatus.VALID.value,
                            _C.names.in_({r.names for r in rows}),
                        )
                    )
                    .group_by(_C.names)
                )
            }
            warned: dict[tuple[int, datetime], list[int]] = {}
            for w in conn.execute(
                select(expiry_warnings).where(
                    expiry_warnings.c.certificate_id.in_([r.id for r in rows])
                )
            ):
                warned.setdefault((w.certificate_id, w.not_after), []).append(w.threshold)
        found = []
        for r in rows:
            if latest[r.names] <= r.not_after:  # else a newer one replaced it
                found.append(
                    ExpiryCandidate(
                        r.id,
                        tuple(json.loads(r.names)),
                        r.not_after,
                        tuple(warned.get((r.id, r.not_after), ())),
                    )
                )
        return found

    def warn_expiry(
        self,
        cert_id: int,
        not_after: datetime,
        thresholds: Iterable[int],
        message: str,
        now: datetime,
    ) -> bool:
        """Mark `thresholds` as warned about for this not-after and write the `expiring`
        event, in one transaction; False when another process did it first."""
        try:
            with self._write() as conn:
                conn.execute(
                    insert(expiry_warnings),
                    [
                        {
                            "certificate_id": cert_id,
                            "not_after": not_after,
                            "threshold": t,
                            "at": now,
                        }
                        for t in thresholds
                    ],
                )
                add_event(conn, now, EventKind.EXPIRING, message, cert_id=cert_id)
        except IntegrityError:
            return False
        return True

    # -- the outbox ----------------------------------------------------------------------

    def queue_mails(self, now: datetime, route: Router, batch: int = 500) -> int:
        """Queue the mails the events after the cursor call for and move the cursor past
        them, in one transaction. Returns how many events were read (0: none left)."""
        with self._read() as conn:  # most looks find nothing: no write transaction then
            cursor = conn.execute(
                select(runtime_settings.c.value).where(runtime_settings.c.name == MAIL_CURSOR)
            ).scalar_one_or_none()
            newest = conn.execute(select(func.max(events.c.id))).scalar_one_or_none()
        if newest is None or newest <= int(cursor or 0):
            return 0
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # IDs are handed out before commit, so an event with a lower ID can become
                # visible after a higher one the cursor already passed. This lock waits
                # for every transaction still writing events (and holds new ones back
                # for the few milliseconds this takes): what is visible now is all.
                conn.execute(text("LOCK TABLE events IN SHARE MODE"))
            cursor = conn.execute(
                select(runtime_settings.c.value)
                .where(runtime_settings.c.name == MAIL_CURSOR)
                .with_for_update()
            ).scalar_one_or_none()
            after = int(cursor or 0)
            rows = list(
                conn.execute(
                    select(
                        events,
                        _C.notify_to.label("cert_notify_to"),
                        accounts.c.emails.label("account_emails"),
                    )
                    .select_from(events)
                    .outerjoin(certificates, _C.id == events.c.certificate_id)
                    .outerjoin(accounts, accounts.c.id == _C.account_id)
                    .where(events.c.id > after)
                    .order_by(events.c.id)
                    .limit(batch)
                )
            )
            if not rows:
                return 0
            queued = []
            for row in rows:
                own = json.loads(row.cert_notify_to or "[]")
                contacts = json.loads(row.account_emails or "[]")
                for recipient, state, when in route(event_row(row), own, contacts):
                    queued.append(
                        {
                            "event_id": row.id,
                            "recipient": recipient,
                            "state": state,
                            "attempts": 0,
                            "next_try_at": when,
                            "created_at": now,
                        }
                    )
            if queued:
                conn.execute(insert(mail_deliveries), queued)
            value = str(rows[-1].id)
            if cursor is None:
                conn.execute(
                    insert(runtime_settings).values(name=MAIL_CURSOR, value=value, updated_at=now)
                )
            else:
                conn.execute(
                    update(runtime_settings)
                    .where(runtime_settings.c.name == MAIL_CURSOR)
                    .values(value=value, updated_at=now)
                )
        return len(rows)

    def _due_mail(self, now: datetime) -> Any:
        return and_(
            or_(
                _M.state.in_(("queued", "failed", "digest")),
                and_(_M.state == "sending", _M.lease_until <= now),  # its sender died
            ),
            or_(_M.next_try_at.is_(None), _M.next_try_at <= now),
        )

    def claim_mails(self, owner: str, now: datetime, until: datetime) -> tuple[list[int], bool]:
        """The lease of the next due mail; for a digest (True), of every due digest mail of
        its recipient (they go out as one). Empty: nothing is due."""
        due = self._due_mail(now)
        with self._read() as conn:  # most looks find nothing: no write transaction then
            if conn.execute(select(_M.id).where(due).limit(1)).first() is None:
                return [], False
        with self._write() as conn:
            first = conn.execute(
                select(_M.id, _M.recipient, _M.state, _M.answer)
                .where(due)
                .order_by(_M.next_try_at, _M.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if first is None:
                return [], False
            digest = first.state == "digest" or (
                first.state == "sending" and first.answer == "digest"
            )
            where = (
                and_(due, _M.recipient == first.recipient, _M.state.in_(("digest", "sending")))
                if digest
                else _M.id == first.id
            )
            ids = [r.id for r in conn.execute(select(_M.id).where(where).with_for_update())]
            conn.execute(
                update(mail_deliveries)
                .where(_M.id.in_(ids))
                .values(
                    state="sending",
                    lease_owner=owner,
                    lease_until=until,
                    answer="digest" if digest else None,
                )
            )
        return ids, digest

    def mail_items(self, ids: Sequence[int]) -> list[MailItem]:
        with self._read() as conn:
            rows = list(
                conn.execute(
                    select(
                        _M.id.label("delivery_id"),
                        _M.recipient,
                        _M.attempts,
                        _M.created_at.label("delivery_created_at"),
                        events,
                        _C.names.label("cert_names"),
                        _C.label.label("cert_label"),
                        _C.not_after.label("cert_not_after"),
                    )
                    .select_from(mail_deliveries)
                    .outerjoin(events, events.c.id == _M.event_id)
                    .outerjoin(certificates, _C.id == events.c.certificate_id)
                    .where(_M.id.in_(list(ids)))
                    .order_by(_M.id)
                )
            )
        return [
            MailItem(
                delivery_id=r.delivery_id,
                recipient=r.recipient,
                attempts=r.attempts,
                created_at=r.delivery_created_at,
                event=event_row(r) if r.id is not None else None,
                names=tuple(json.loads(r.cert_names)) if r.cert_names else (),
                label=r.cert_label,
                not_after=r.cert_not_after,
            )
            for r in rows
        ]

    def mails_sent(self, ids: Sequence[int], owner: str, now: datetime, answer: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(mail_deliveries)
                .where(and_(_M.id.in_(list(ids)), _M.lease_owner == owner))
                .values(
                    state="sent",
                    attempts=_M.attempts + 1,
                    sent_at=now,
                    answer=answer[:500],
                    last_error=None,
                    lease_owner=None,
                    lease_until=None,
                )
            )

    def mails_failed(
        self,
        ids: Sequence[int],
        owner: str,
        error: str,
        next_try_at: datetime | None,
        *,
        digest: bool,
    ) -> None:
        """A failed try: again at `next_try_at` (a digest stays one), or `dead`."""
        state = "dead" if next_try_at is None else ("digest" if digest else "failed")
        with self._write() as conn:
            conn.execute(
                update(mail_deliveries)
                .where(and_(_M.id.in_(list(ids)), _M.lease_owner == owner))
                .values(
                    state=state,
                    attempts=_M.attempts + 1,
                    next_try_at=next_try_at,
                    last_error=error[:1000],
                    answer=None,
                    lease_owner=None,
                    lease_until=None,
                )
            )

    def mail_deliveries(self, limit: int = 100, state: str | None = None) -> list[MailDelivery]:
        query = select(mail_deliveries).order_by(_M.id.desc()).limit(limit)
        if state is not None:
            query = query.where(_M.state == state)
        with self._read() as conn:
            rows = list(conn.execute(query))
        return [
            MailDelivery(
                id=r.id,
                event_id=r.event_id,
                recipient=r.recipient,
                state=r.state,
                attempts=r.attempts,
                next_try_at=r.next_try_at,
                last_error=r.last_error,
                answer=None if r.answer == "digest" else r.answer,
                created_at=r.created_at,
                sent_at=r.sent_at,
            )
            for r in reversed(rows)
        ]

    def mail_counts(self) -> dict[str, int]:
        """Mails by state (sent, failed: waiting for a retry, dead, queued, digest,
        sending), and `failed_attempts`: every try that failed, of mails sent later too."""
        found: dict[str, int] = {}
        tries = 0
        with self._read() as conn:
            for r in conn.execute(
                select(
                    _M.state, func.count().label("n"), func.sum(_M.attempts).label("tries")
                ).group_by(_M.state)
            ):
                found[r.state] = int(r.n)
                tries += int(r.tries or 0)
        found["failed_attempts"] = tries - found.get("sent", 0)
        return found

    # -- alarms and recipients -----------------------------------------------------------

    def acknowledge_alarm(
        self, cert_id: int, until: datetime, by: str, reason: str, now: datetime
    ) -> bool:
        """Mute the certificate's alarm until `until`; False when it has none."""
        with self._write() as conn:
            done = conn.execute(
                update(certificates)
                .where(and_(_C.id == cert_id, _C.alarm_since.is_not(None)))
                .values(alarm_ack_until=until, alarm_ack_by=by, alarm_ack_reason=reason)
            ).rowcount
            if done:
                add_event(
                    conn,
                    now,
                    EventKind.ALARM_ACKNOWLEDGED,
                    f"alarm acknowledged by {by} until {until:%Y-%m-%d %H:%M} UTC: {reason}",
                    cert_id=cert_id,
                )
        return bool(done)

    def set_certificate_notify_to(self, cert_id: int, emails: Sequence[str]) -> None:
        with self._write() as conn:
            conn.execute(
                update(certificates)
                .where(_C.id == cert_id)
                .values(notify_to=json.dumps(list(emails)) if emails else None)
            )

    # -- ACME request durations ----------------------------------------------------------

    def add_acme_request_stats(
        self, samples: Mapping[tuple[str, str, str], tuple[int, float, list[int]]]
    ) -> None:
        """Add each series' count, sum and per-bucket counts to what the store holds."""
        s = acme_request_stats.c
        with self._write() as conn:
            for (host, method, status), (count, total, buckets) in samples.items():
                key = and_(s.host == host, s.method == method, s.status == status)
                held = conn.execute(
                    select(s.count.label("n"), s.total, s.buckets).where(key).with_for_update()
                ).first()
                if held is None:
                    conn.execute(
                        insert(acme_request_stats).values(
                            host=host,
                            method=method,
                            status=status,
                            count=count,
                            total=total,
                            buckets=json.dumps(buckets),
                        )
                    )
                    continue
                old = json.loads(held.buckets)
                merged = [a + b for a, b in zip(old, buckets, strict=False)]
                conn.execute(
                    update(acme_request_stats)
                    .where(key)
                    .values(
                        count=held.n + count,
                        total=held.total + total,
                        buckets=json.dumps(merged),
                    )
                )

    def acme_request_stats(self) -> list[tuple[str, str, str, int, float, list[int]]]:
        s = acme_request_stats.c
        with self._read() as conn:
            return [
                (r.host, r.method, r.status, r.count, r.total, json.loads(r.buckets))
                for r in conn.execute(select(acme_request_stats).order_by(s.host, s.method))
            ]
