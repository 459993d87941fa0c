"""Webhooks in the store: the endpoints, the outbox that turns events into deliveries,
and the deliveries' attempts.

The outbox is a cursor over `events.id` (`runtime_settings` row `webhook-cursor`). One
pass reads the events after it, queues a delivery for each webhook that wants one and
moves the cursor past them, all in ONE write transaction, so every event reaches every
webhook exactly once however many processes and nodes run the pass:

- SQLite: write transactions are serialised (store/db.py `write_lock`, BEGIN
  IMMEDIATE), and an event's ID is given inside its writer's transaction, so IDs
  commit in order and the cursor never passes one that is not committed yet.
- PostgreSQL: the pass locks the cursor's row (`SELECT … FOR UPDATE`), so passes of
  several nodes take turns. A sequence hands out IDs before commit, so an event can
  commit after one with a higher ID: each pass also looks again at the events of the
  last OUTBOX_LOOKBACK that are behind the cursor, and queues what is still missing.
- Either way the unique index on (webhook_id, event_id) refuses a second delivery of
  the same event to the same webhook.

A webhook gets only the events after the newest one when it was added
(`after_event_id`). Deliveries are claimed under a lease, as orders and deployments
are, so one is never sent by two workers at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.errors import LeaseLost, NotFoundError, UsageError
from certbroker.domain.models import Event
from certbroker.domain.webhooks import (
    OPEN_STATES,
    Delivery,
    DeliveryState,
    Webhook,
    WebhookFormat,
    kinds_of,
)
from certbroker.store.base import StoreBase
from certbroker.store.events import event_row
from certbroker.store.rows import new_id
from certbroker.store.schema import events, runtime_settings, webhook_deliveries, webhooks

CURSOR = "webhook-cursor"
OUTBOX_LOOKBACK = timedelta(minutes=2)  # late commits looked for again (PostgreSQL)
OUTBOX_BATCH = 500  # events per pass

_W = webhooks.c
_D = webhook_deliveries.c
_RS = runtime_settings.c


def _webhook(row: Row[Any]) -> Webhook:
    return Webhook(
        id=row.id,
        url=row.url,
        events=tuple(json.loads(row.events)),
        format=WebhookFormat(row.format),
        allow_private=bool(row.allow_private),
        description=row.description,
        enabled=bool(row.enabled),
        disabled_reason=row.disabled_reason,
        after_event_id=row.after_event_id,
        created_at=row.created_at,
    )


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        message_id=row.message_id,
        kind=row.kind,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        created_at=row.created_at,
        next_try_at=row.next_try_at,
        first_attempt_at=row.first_attempt_at,
        last_attempt_at=row.last_attempt_at,
        last_status=row.last_status,
        last_response=row.last_response,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
    )


def new_message_id() -> str:
    """A delivery's `webhook-id`: unique, the same on every attempt."""
    return f"msg_{uuid.uuid4().hex}"


# Every column of a delivery but the payload (what lists show).
_DELIVERY_COLUMNS = [c for c in webhook_deliveries.c if c.name != "payload"]


class WebhookStore(StoreBase):
    # -- webhooks --------------------------------------------------------------------------

    def add_webhook(
        self,
        *,
        url: str,
        events_wanted: Sequence[str],
        format: WebhookFormat,
        allow_private: bool,
        description: str | None,
        secret_sealed: bytes,
        now: datetime,
    ) -> Webhook:
        """Store a webhook; it gets the events after the newest one now."""
        with self._write() as conn:
            newest = conn.execute(select(func.max(events.c.id))).scalar_one_or_none() or 0
            webhook_id = new_id(
                conn.execute(
                    insert(webhooks).values(
                        url=url,
                        events=json.dumps(list(events_wanted)),
                        format=format.value,
                        allow_private=allow_private,
                        description=description,
                        secret_sealed=secret_sealed,
                        enabled=True,
                        after_event_id=int(newest),
                        created_at=now,
                        updated_at=now,
                    )
                )
            )
        return self.get_webhook(webhook_id)

    def get_webhook(self, webhook_id: int) -> Webhook:
        with self._read() as conn:
            row = conn.execute(select(webhooks).where(_W.id == webhook_id)).first()
        if row is None:
            raise NotFoundError(
                f"no webhook with ID {webhook_id}; `certbroker webhook list` shows them"
            )
        return _webhook(row)

    def list_webhooks(self) -> list[Webhook]:
        with self._read() as conn:
            return [_webhook(r) for r in conn.execute(select(webhooks).order_by(_W.id))]

    def webhook_secret_sealed(self, webhook_id: int) -> bytes:
        with self._read() as conn:
            value = conn.execute(
                select(_W.secret_sealed).where(_W.id == webhook_id)
            ).scalar_one_or_none()
        if value is None:
            raise NotFoundError(f"no webhook with ID {webhook_id}")
        return bytes(value)

    def delete_webhook(self, webhook_id: int) -> None:
        """The webhook and its delivery log."""
        with self._write() as conn:
            conn.execute(delete(webhook_deliveries).where(_D.webhook_id == webhook_id))
            gone = conn.execute(delete(webhooks).where(_W.id == webhook_id)).rowcount
        if not gone:
            raise NotFoundError(f"no webhook with ID {webhook_id}")

    def set_webhook_enabled(
        self, webhook_id: int, enabled: bool, reason: str | None, now: datetime
    ) -> None:
        with self._write() as conn:
            done = conn.execute(
                update(webhooks)
                .where(_W.id == webhook_id)
                .values(
                    enabled=enabled, disabled_reason=None if enabled else reason, updated_at=now
                )
            ).rowcount
        if not done:
            raise NotFoundError(f"no webhook with ID {webhook_id}")

    # -- the outbox ------------------------------------------------------------------------

    def queue_webhook_deliveries(
        self, now: datetime, *, lookback: timedelta = OUTBOX_LOOKBACK, batch: int = OUTBOX_BATCH
    ) -> int:
        """One pass of the outbox (see the module's docstring): deliveries queued for the
        events after the cursor (at most `batch` of them) and the cursor moved past them,
        in one transaction. How many events it read after the cursor (`batch`: call it
        again, there may be more)."""
        sqlite = self.engine.dialect.name == "sqlite"
        if sqlite and not self._webhook_outbox_behind():
            return 0  # nothing new: no write transaction (IDs commit in order on SQLite)
        with self._write() as conn:
            hooks = [
                (int(r.id), int(r.after_event_id), kinds_of(json.loads(r.events)))
                for r in conn.execute(
                    select(_W.id, _W.after_event_id, _W.events).where(_W.enabled.is_(True))
                )
            ]
            cursor = self._lock_webhook_cursor(conn, now)
            if cursor is None:
                return 0  # another node made the cursor's row just now; next pass
            if not hooks:
                return 0  # nothing is owed to anyone; a new webhook starts after its own ID
            floor = min(after for _, after, _ in hooks)
            start = max(cursor, floor)  # nothing at or before `floor` is owed
            fresh = list(
                conn.execute(
                    select(events.c.id, events.c.kind)
                    .where(events.c.id > start)
                    .order_by(events.c.id)
                    .limit(batch)
                )
            )
            late = list(
                conn.execute(
                    select(events.c.id, events.c.kind).where(
                        and_(
                            events.c.id <= start,
                            events.c.id > floor,
                            events.c.at >= now - lookback,
                        )
                    )
                )
            )
            wanted = [
                (hook_id, int(e.id), str(e.kind))
                for e in {int(e.id): e for e in [*late, *fresh]}.values()
                for hook_id, after, kinds in hooks
                if e.id > after and e.kind in kinds
            ]
            if wanted:
                have = {
                    (int(r.webhook_id), int(r.event_id))
                    for r in conn.execute(
                        select(_D.webhook_id, _D.event_id).where(
                            _D.event_id.in_(sorted({e for _, e, _ in wanted}))
                        )
                    )
                }
                rows = [
                    {
                        "webhook_id": hook_id,
                        "event_id": event_id,
                        "message_id": new_message_id(),
                        "kind": kind,
                        "state": DeliveryState.QUEUED.value,
                        "attempts": 0,
                        "next_try_at": now,
                        "created_at": now,
                    }
                    for hook_id, event_id, kind in wanted
                    if (hook_id, event_id) not in have
                ]
                if rows:
                    conn.execute(insert(webhook_deliveries), rows)
            moved = int(fresh[-1].id) if fresh else start
            if moved != cursor:
                conn.execute(
                    update(runtime_settings)
                    .where(_RS.name == CURSOR)
                    .values(value=str(moved), updated_at=now)
                )
        return len(fresh)

    def _webhook_outbox_behind(self) -> bool:
        """Whether an enabled webhook exists and an event is newer than the cursor."""
        with self._read() as conn:
            if conn.execute(select(_W.id).where(_W.enabled.is_(True)).limit(1)).first() is None:
                return False
            newest = conn.execute(select(func.max(events.c.id))).scalar_one_or_none() or 0
            cursor = conn.execute(select(_RS.value).where(_RS.name == CURSOR)).scalar_one_or_none()
        return cursor is None or int(newest) > int(cursor)

    def _lock_webhook_cursor(self, conn: Connection, now: datetime) -> int | None:
        """The cursor, its row locked until the transaction ends (PostgreSQL; SQLite's
        writers are serialised anyway). Made at 0 when missing (a webhook's own
        `after_event_id` keeps older events out); None if another node made it now."""
        value = conn.execute(
            select(_RS.value).where(_RS.name == CURSOR).with_for_update()
        ).scalar_one_or_none()
        if value is not None:
            return int(value)
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(runtime_settings).values(name=CURSOR, value="0", updated_at=now)
                )
        except IntegrityError:
            return None
        return 0

    # -- deliveries ------------------------------------------------------------------------

    def _webhook_due(self, now: datetime) -> Any:
        return and_(
            _D.state.in_(OPEN_STATES),  # `sending` too: its holder's lease ran out
            _D.next_try_at <= now,
            or_(_D.lease_owner.is_(None), _D.lease_until <= now),
            _D.webhook_id.in_(select(_W.id).where(_W.enabled.is_(True))),
        )

    def claim_next_webhook_delivery(self, owner: str, now: datetime, until: datetime) -> int | None:
        """Take the lease of the next due delivery in one statement (see claim_next)."""
        return self._claim_next_due(
            webhook_deliveries,
            self._webhook_due(now),
            {"state": DeliveryState.SENDING.value, "lease_owner": owner, "lease_until": until},
        )

    def claim_webhook_delivery(
        self, delivery_id: int, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Take this delivery's lease (retry --wait), due or not, if it is open and free."""
        with self._write() as conn:
            done = conn.execute(
                update(webhook_deliveries)
                .where(
                    and_(
                        _D.id == delivery_id,
                        _D.state.in_(OPEN_STATES),
                        or_(_D.lease_owner.is_(None), _D.lease_until <= now),
                    )
                )
                .values(state=DeliveryState.SENDING.value, lease_owner=owner, lease_until=until)
            ).rowcount
        return bool(done)

    def add_test_delivery(
        self, webhook_id: int, payload: str, owner: str, now: datetime, until: datetime
    ) -> int:
        """A test message's delivery, already leased to `owner` (it is sent at once)."""
        with self._write() as conn:
            return new_id(
                conn.execute(
                    insert(webhook_deliveries).values(
                        webhook_id=webhook_id,
                        event_id=None,
                        message_id=new_message_id(),
                        kind="webhook.test",
                        state=DeliveryState.SENDING.value,
                        attempts=0,
                        next_try_at=now,
                        payload=payload,
                        lease_owner=owner,
                        lease_until=until,
                        created_at=now,
                    )
                )
            )

    def get_webhook_delivery(self, delivery_id: int) -> Delivery:
        with self._read() as conn:
            row = conn.execute(select(*_DELIVERY_COLUMNS).where(_D.id == delivery_id)).first()
        if row is None:
            raise NotFoundError(
                f"no webhook delivery with ID {delivery_id}; "
                "`certbroker webhook deliveries` lists them"
            )
        return _delivery(row)

    def webhook_delivery_payload(self, delivery_id: int) -> str | None:
        """The body as first sent (None before the first attempt)."""
        with self._read() as conn:
            value = conn.execute(
                select(_D.payload).where(_D.id == delivery_id)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def list_webhook_deliveries(
        self,
        *,
        webhook_id: int | None = None,
        state: DeliveryState | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Newest first."""
        query = select(*_DELIVERY_COLUMNS).order_by(_D.id.desc()).limit(limit)
        if webhook_id is not None:
            query = query.where(_D.webhook_id == webhook_id)
        if state is not None:
            query = query.where(_D.state == state.value)
        with self._read() as conn:
            return [_delivery(r) for r in conn.execute(query)]

    def record_webhook_attempt(
        self,
        delivery_id: int,
        owner: str,
        now: datetime,
        *,
        state: DeliveryState,
        status: int | None,
        response: str | None,
        error: str | None,
        next_try_at: datetime | None,
        payload: str,
        disable_reason: str | None = None,
    ) -> None:
        """How one attempt went, under the delivery's lease (LeaseLost otherwise): its
        state after it (delivered, failed with `next_try_at`, dead), the status and the
        start of the answer, the payload as sent. `disable_reason`: the receiver asked
        not to be called again (410 Gone); the webhook is disabled with it."""
        with self._write() as conn:
            row = conn.execute(
                select(_D.lease_owner, _D.webhook_id, _D.first_attempt_at).where(
                    _D.id == delivery_id
                )
            ).first()
            if row is None or row.lease_owner != owner:
                raise LeaseLost(f"webhook delivery {delivery_id} is no longer held by {owner}")
            conn.execute(
                update(webhook_deliveries)
                .where(_D.id == delivery_id)
                .values(
                    state=state.value,
                    attempts=_D.attempts + 1,
                    first_attempt_at=row.first_attempt_at or now,
                    last_attempt_at=now,
                    last_status=status,
                    last_response=response,
                    last_error=error,
                    next_try_at=next_try_at,
                    payload=func.coalesce(_D.payload, payload),
                    lease_owner=None,
                    lease_until=None,
                    delivered_at=now if state is DeliveryState.DELIVERED else None,
                )
            )
            if disable_reason is not None:
                conn.execute(
                    update(webhooks)
                    .where(_W.id == row.webhook_id)
                    .values(enabled=False, disabled_reason=disable_reason, updated_at=now)
                )

    def retry_webhook_delivery(self, delivery_id: int, now: datetime) -> Delivery:
        """A dead (or failing) delivery goes out again now, with a new day of retries."""
        with self._write() as conn:
            row = conn.execute(select(_D.state).where(_D.id == delivery_id)).first()
            if row is None:
                raise NotFoundError(f"no webhook delivery with ID {delivery_id}")
            if row.state not in (DeliveryState.DEAD.value, DeliveryState.FAILED.value):
                raise UsageError(
                    f"webhook delivery {delivery_id} is {row.state}; only a dead or failed "
                    "one can be retried"
                )
            conn.execute(
                update(webhook_deliveries)
                .where(_D.id == delivery_id)
                .values(
                    state=DeliveryState.QUEUED.value,
                    next_try_at=now,
                    first_attempt_at=None,
                    lease_owner=None,
                    lease_until=None,
                )
            )
        return self.get_webhook_delivery(delivery_id)

    def webhook_delivery_counts(self) -> dict[str, int]:
        """Deliveries of events (test messages left out) by result, for
        `certbroker_notifications_total{channel="webhook",result=…}`:

        - `delivered`: deliveries the receiver accepted (2xx);
        - `failed`: attempts that failed (an error, a timeout, a refused address, a
          status other than 2xx), over all deliveries, those later delivered included;
        - `dead`: deliveries given up (a day of failures, or 410 Gone) and not retried.

        Counted from the store, so every node reports the same numbers. They only grow,
        except that `webhook retry` takes a delivery out of `dead` and deleting a webhook
        takes its deliveries with it (a counter reset, to Prometheus).
        """
        delivered = func.sum(case((_D.state == DeliveryState.DELIVERED.value, 1), else_=0))
        dead = func.sum(case((_D.state == DeliveryState.DEAD.value, 1), else_=0))
        with self._read() as conn:
            row = conn.execute(
                select(
                    func.coalesce(delivered, 0).label("delivered"),
                    func.coalesce(dead, 0).label("dead"),
                    func.coalesce(func.sum(_D.attempts), 0).label("attempts"),
                ).where(_D.event_id.is_not(None))
            ).one()
        return {
            "delivered": int(row.delivered),
            "failed": int(row.attempts) - int(row.delivered),
            "dead": int(row.dead),
        }

    # -- the event a delivery carries ------------------------------------------------------

    def webhook_event(self, event_id: int) -> Event:
        """The event a delivery carries."""
        with self._read() as conn:
            r = conn.execute(select(events).where(events.c.id == event_id)).first()
        if r is None:
            raise NotFoundError(f"no event with ID {event_id}")
        return event_row(r)
