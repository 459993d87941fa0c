"""Webhooks (`Broker.webhooks`): signed JSON POSTs to endpoints people add, one per event
they asked for, retried with backoff for a day, with a delivery log and a dead letter.

Events become deliveries through the store's outbox (store/webhooks.py: a cursor over
`events.id` moved in the transaction that queues the deliveries, so each event reaches
each webhook once however many processes run it). `WebhookWorker`, a thread of `serve`,
runs the outbox and sends what is due under a lease, through `ports.WebhookSender`
(notify/webhook.py), which refuses addresses that are not public unless the webhook
allows them. Signed as Standard Webhooks sign (domain/webhooks.py `sign`).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from certbroker import __version__
from certbroker.domain.errors import LeaseLost, NotFoundError, UsageError
from certbroker.domain.models import Event
from certbroker.domain.webhooks import (
    MAX_DESCRIPTION,
    RESPONSE_KEPT,
    RETRY_FIRST,
    SECRET_BYTES,
    TEST_TYPE,
    Delivery,
    DeliveryState,
    Webhook,
    WebhookFormat,
    check_url,
    new_secret,
    next_try,
    parse_events,
    sign,
)
from certbroker.ports import WebhookAnswer, WebhookSender
from certbroker.services import audit
from certbroker.services.common import ServiceContext
from certbroker.services.leases import make_owner
from certbroker.services.periodic import Periodic

log = logging.getLogger("certbroker.webhooks")

LEASE = timedelta(minutes=2)  # one attempt takes at most 10 s (and a DNS look-up)
USER_AGENT = f"certbroker/{__version__} (webhooks; Standard Webhooks signatures)"
GONE = 410  # the receiver asks not to be called again: the webhook is disabled


def event_type(kind: str) -> str:
    """The payload's `type`: certificate.<kind> (issued, renewed, alarm_raised, …)."""
    return "certificate." + kind.replace("-", "_")


def _summary(data: dict[str, Any]) -> str:
    """One line for people (Slack, Teams)."""
    names = ", ".join(data.get("names") or [])
    what = f"certificate {data['certificate_id']}" if data.get("certificate_id") else ""
    if names:
        what += f" ({names})"
    line = f"certbroker: {data['kind']}"
    if what:
        line += f" — {what}"
    return f"{line}: {data['message']}"


def render(fmt: WebhookFormat, type_: str, at: datetime, data: dict[str, Any]) -> str:
    """The body, as sent: the Standard Webhooks JSON payload, or a chat message."""
    if fmt is WebhookFormat.SLACK:
        body: dict[str, Any] = {"text": _summary(data)}
    elif fmt is WebhookFormat.TEAMS:
        body = {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": f"certbroker: {data['kind']}",
            "title": f"certbroker: {data['kind']}",
            "text": _summary(data),
        }
    else:
        body = {"type": type_, "timestamp": at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"))


class WebhookService:
    def __init__(
        self, ctx: ServiceContext, sender: WebhookSender, retry_first: timedelta = RETRY_FIRST
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.sender = sender
        self.retry_first = retry_first

    # -- webhooks --------------------------------------------------------------------------

    def add(
        self,
        url: str,
        events: str | Iterable[str],
        fmt: str | WebhookFormat = WebhookFormat.JSON,
        *,
        allow_private: bool = False,
        description: str | None = None,
    ) -> tuple[Webhook, str]:
        """Check everything (the URL, the event names, where the host points), then store
        the webhook with its signing secret sealed. The webhook and the secret, which is
        shown only now. Nothing is stored on an error."""
        url = check_url(url)
        groups = parse_events(events)
        fmt = fmt if isinstance(fmt, WebhookFormat) else WebhookFormat.parse(fmt)
        description = (description or "").strip() or None
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise UsageError(f"--description is longer than {MAX_DESCRIPTION} characters")
        self.sender.check(url, allow_private)
        secret = new_secret(secrets.token_bytes(SECRET_BYTES))
        webhook = self.repo.add_webhook(
            url=url,
            events_wanted=groups,
            format=fmt,
            allow_private=allow_private,
            description=description,
            secret_sealed=self.ctx.sealer.seal(secret.encode()),
            now=self.ctx.clock(),
        )
        log.info("webhook %d added: %s (%s)", webhook.id, url, ", ".join(groups))
        audit.record(
            self.ctx, "webhook.add", "webhook", webhook.id,
            {"url": url, "events": list(groups), "format": fmt.value,
             "allow_private": allow_private, "description": description},
            secrets=[secret],
        )  # fmt: skip
        return webhook, secret

    def get(self, webhook_id: int) -> Webhook:
        return self.repo.get_webhook(webhook_id)

    def all(self) -> list[Webhook]:
        return self.repo.list_webhooks()

    def delete(self, webhook_id: int) -> Webhook:
        """Forget the webhook and its delivery log."""
        webhook = self.repo.get_webhook(webhook_id)
        self.repo.delete_webhook(webhook_id)
        audit.record(self.ctx, "webhook.delete", "webhook", webhook_id, {"url": webhook.url})
        return webhook

    def set_enabled(self, webhook_id: int, enabled: bool) -> Webhook:
        """A disabled webhook gets nothing queued and nothing sent until enabled again;
        the events meanwhile are not owed to it."""
        reason = None if enabled else "disabled by a person"
        self.repo.set_webhook_enabled(webhook_id, enabled, reason, self.ctx.clock())
        action = "webhook.enable" if enabled else "webhook.disable"
        audit.record(self.ctx, action, "webhook", webhook_id)
        return self.repo.get_webhook(webhook_id)

    # -- the delivery log ------------------------------------------------------------------

    def deliveries(
        self,
        webhook_id: int | None = None,
        state: str | DeliveryState | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Newest first."""
        if webhook_id is not None:
            self.repo.get_webhook(webhook_id)
        chosen = DeliveryState.parse(state) if isinstance(state, str) else state
        return self.repo.list_webhook_deliveries(
            webhook_id=webhook_id, state=chosen, limit=max(1, min(limit, 1000))
        )

    def delivery(self, delivery_id: int) -> Delivery:
        return self.repo.get_webhook_delivery(delivery_id)

    def retry(self, delivery_id: int) -> Delivery:
        """A dead (or failing) delivery is sent again now (by `serve`), with the same
        message ID and body, and a new day of retries."""
        delivery = self.repo.retry_webhook_delivery(delivery_id, self.ctx.clock())
        audit.record(self.ctx, "webhook.retry", "webhook-delivery", delivery_id)
        return delivery

    def send_now(self, delivery_id: int) -> Delivery:
        """Send this open delivery in this process now (`webhook retry --wait`)."""
        owner = make_owner("webhook-now")
        now = self.ctx.clock()
        if not self.repo.claim_webhook_delivery(delivery_id, owner, now, now + LEASE):
            current = self.repo.get_webhook_delivery(delivery_id)
            if current.state.value in ("queued", "sending", "failed"):
                raise UsageError(
                    f"webhook delivery {delivery_id} is being sent by another process; "
                    f"`certbroker webhook deliveries` shows how it went"
                )
            return current
        return self._send_claimed(delivery_id, owner)

    def test(self, webhook_id: int) -> Delivery:
        """Send a test message now, in this process; it is logged like a delivery (not
        retried: `webhook retry` sends it again)."""
        webhook = self.repo.get_webhook(webhook_id)
        now = self.ctx.clock()
        data: dict[str, Any] = {
            "event_id": None,
            "kind": "test",
            "message": f"a test message to webhook {webhook.id} ({webhook.url})",
            "certificate_id": None,
            "names": [],
            "serial": None,
            "not_after": None,
            "problem": None,
        }
        payload = render(webhook.format, TEST_TYPE, now, data)
        owner = make_owner("webhook-test")
        delivery_id = self.repo.add_test_delivery(webhook.id, payload, owner, now, now + LEASE)
        return self._send_claimed(delivery_id, owner)

    def counts(self) -> dict[str, int]:
        """Deliveries by result (store/webhooks.py `webhook_delivery_counts`)."""
        return self.repo.webhook_delivery_counts()

    # -- the outbox and the sending --------------------------------------------------------

    def queue(self) -> int:
        """Turn new events into deliveries (passes of the outbox until it is caught up,
        at most 20); how many events were read."""
        read = 0
        for _ in range(20):
            got = self.repo.queue_webhook_deliveries(self.ctx.clock())
            read += got
            if not got:
                break
        return read

    def run_due(self, owner: str | None = None, limit: int = 100) -> list[Delivery]:
        """Every delivery due now, one after the other (each under its lease)."""
        owner = owner or make_owner("webhook")
        done = []
        for _ in range(limit):
            now = self.ctx.clock()
            delivery_id = self.repo.claim_next_webhook_delivery(owner, now, now + LEASE)
            if delivery_id is None:
                break
            done.append(self._send_claimed(delivery_id, owner))
        return done

    def _payload(self, webhook: Webhook, delivery: Delivery) -> str:
        """The body of a delivery's first attempt (later ones send the same bytes)."""
        assert delivery.event_id is not None
        try:
            event: Event | None = self.repo.webhook_event(delivery.event_id)
        except NotFoundError:
            event = None
        data: dict[str, Any] = {
            "event_id": delivery.event_id,
            "kind": delivery.kind,
            "message": event.message if event else "",
            "certificate_id": event.certificate_id if event else None,
            "names": [],
            "serial": None,
            "not_after": None,
            "problem": event.problem.to_json() if event and event.problem else None,
        }
        if event is not None and event.certificate_id is not None:
            try:
                cert = self.repo.get_certificate(event.certificate_id)
            except NotFoundError:
                pass  # deleted meanwhile: the event says what there is to say
            else:
                data["names"] = list(cert.names)
                data["serial"] = cert.serial
                data["not_after"] = cert.not_after.isoformat() if cert.not_after else None
        at = event.at if event else delivery.created_at
        return render(webhook.format, event_type(delivery.kind), at, data)

    def headers(self, secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }

    def _send_claimed(self, delivery_id: int, owner: str) -> Delivery:
        delivery = self.repo.get_webhook_delivery(delivery_id)
        webhook = self.repo.get_webhook(delivery.webhook_id)
        payload = self.repo.webhook_delivery_payload(delivery_id)
        if payload is None:
            payload = self._payload(webhook, delivery)
        secret = self.ctx.sealer.unseal(self.repo.webhook_secret_sealed(webhook.id)).decode()
        body = payload.encode()
        timestamp = int(self.ctx.clock().timestamp())
        try:
            answer = self.sender.send(
                webhook.url,
                body,
                self.headers(secret, delivery.message_id, timestamp, body),
                webhook.allow_private,
            )
        except Exception as exc:  # the sender should not raise; the lease must still end
            log.exception("webhook delivery %d: sending failed", delivery_id)
            answer = WebhookAnswer(error=f"{type(exc).__name__}: {exc}")
        self._record(delivery, webhook, owner, answer, payload)
        return self.repo.get_webhook_delivery(delivery_id)

    def _record(
        self,
        delivery: Delivery,
        webhook: Webhook,
        owner: str,
        answer: WebhookAnswer,
        payload: str,
    ) -> None:
        now = self.ctx.clock()
        disable = None
        retry_at = None
        if answer.ok:
            state = DeliveryState.DELIVERED
        elif answer.status == GONE:
            state = DeliveryState.DEAD
            disable = f"the receiver answered 410 Gone ({now:%Y-%m-%d %H:%M} UTC)"
        elif delivery.event_id is None:
            state = DeliveryState.DEAD  # a test message is not retried by itself
        else:
            retry_at = next_try(
                delivery.first_attempt_at or now, now, delivery.attempts + 1, self.retry_first
            )
            state = DeliveryState.FAILED if retry_at else DeliveryState.DEAD
        error = answer.error
        if state is DeliveryState.DEAD and delivery.event_id is not None and disable is None:
            error = f"{error}; given up a day after the first attempt"
        try:
            self.repo.record_webhook_attempt(
                delivery.id,
                owner,
                now,
                state=state,
                status=answer.status,
                response=answer.body_head[:RESPONSE_KEPT] if answer.status is not None else None,
                error=None if answer.ok else error,
                next_try_at=retry_at,
                payload=payload,
                disable_reason=disable,
            )
        except LeaseLost:
            log.warning("webhook delivery %d: another worker took it over", delivery.id)
            return
        if answer.ok:
            log.info("webhook %d: delivery %d delivered", webhook.id, delivery.id)
        else:
            log.warning(
                "webhook %d: delivery %d failed (%s)%s",
                webhook.id,
                delivery.id,
                answer.error,
                f"; next try {retry_at:%H:%M:%S} UTC" if retry_at else f"; {state.value}",
            )
            if disable:
                log.warning("webhook %d disabled: %s", webhook.id, disable)


class WebhookWorker(Periodic):
    """Runs the outbox and sends due deliveries every `interval` seconds until stopped
    (a thread in `serve`)."""

    def __init__(self, service: WebhookService, interval: float = 1.0) -> None:
        def look(owner: str) -> None:
            service.queue()
            service.run_due(owner)

        super().__init__("webhooks", look, interval, log)
