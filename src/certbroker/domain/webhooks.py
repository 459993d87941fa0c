"""Webhooks: which events an endpoint gets, the Standard Webhooks signature, and when a
failed delivery is tried again (pure; the sending is notify/webhook.py's, the outbox
store/webhooks.py's, the logic services/webhooks.py's)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from certbroker.domain.errors import UsageError
from certbroker.domain.models import EventKind

# What `--events` names, and the event kinds each stands for.
EVENT_GROUPS: dict[str, tuple[EventKind, ...]] = {
    "issued": (EventKind.ISSUED,),
    "renewed": (EventKind.RENEWED,),
    "failed": (EventKind.FAILED, EventKind.ATTEMPT_FAILED),
    "expiring": (EventKind.EXPIRING,),
    "revoked": (EventKind.REVOKED,),
    "alarm": (EventKind.ALARM_RAISED, EventKind.ALARM_CLEARED, EventKind.ALARM_ACKNOWLEDGED),
    "deployed": (
        EventKind.DEPLOYED,
        EventKind.DEPLOY_FAILED,
        EventKind.INSTALLED,
        EventKind.INSTALL_FAILED,
    ),
}
ALL_EVENTS = "all"
TEST_TYPE = "webhook.test"  # the `type` of what `webhook test` sends

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret
SECRET_BYTES = 32
MAX_URL = 2000
MAX_DESCRIPTION = 500
RESPONSE_KEPT = 300  # bytes of the receiver's answer kept in the delivery log

RETRY_FIRST = timedelta(seconds=30)
RETRY_CEILING = timedelta(hours=1)
RETRY_WINDOW = timedelta(days=1)  # after the first attempt; then the delivery is dead
RETRY_JITTER = 0.1


class WebhookFormat(StrEnum):
    JSON = "json"  # the Standard Webhooks payload: {"type", "timestamp", "data"}
    SLACK = "slack"  # a Slack incoming webhook: {"text": …}
    TEAMS = "teams"  # a Microsoft Teams incoming webhook: a minimal MessageCard

    @classmethod
    def parse(cls, text: str) -> WebhookFormat:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UsageError(
                f"--format {text!r} is not one of {', '.join(f.value for f in cls)}"
            ) from None


class DeliveryState(StrEnum):
    QUEUED = "queued"  # not tried yet
    SENDING = "sending"  # a worker holds its lease and is sending it
    FAILED = "failed"  # an attempt failed; tried again at next_try_at
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # failing for a day (or 410 Gone): not tried again unless retried

    @classmethod
    def parse(cls, text: str) -> DeliveryState:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UsageError(
                f"--state {text!r} is not one of {', '.join(s.value for s in cls)}"
            ) from None


OPEN_STATES = (DeliveryState.QUEUED.value, DeliveryState.SENDING.value, DeliveryState.FAILED.value)


def parse_events(text: str | Iterable[str]) -> tuple[str, ...]:
    """`issued,renewed,…` (or `all`) as the group names, in EVENT_GROUPS' order; one
    UsageError naming every unknown name."""
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    names = [p.strip().lower() for p in parts if p.strip()]
    if not names:
        raise UsageError(
            f"--events names no event; give some of {', '.join(EVENT_GROUPS)} (or all)"
        )
    if ALL_EVENTS in names:
        return tuple(EVENT_GROUPS)
    unknown = [n for n in dict.fromkeys(names) if n not in EVENT_GROUPS]
    if unknown:
        raise UsageError(
            f"--events: unknown event {', '.join(repr(u) for u in unknown)}; the events "
            f"are {', '.join(EVENT_GROUPS)} (or all)"
        )
    return tuple(g for g in EVENT_GROUPS if g in names)


def kinds_of(groups: Iterable[str]) -> frozenset[str]:
    """The event kinds (EventKind values) the groups stand for."""
    return frozenset(k.value for g in groups for k in EVENT_GROUPS.get(g, ()))


def check_url(url: str) -> str:
    """An http or https URL with a host, stripped; UsageError otherwise. (Where it
    points is checked by the sender, which resolves it.)"""
    url = url.strip()
    problem = ""
    if len(url) > MAX_URL:
        problem = f"is longer than {MAX_URL} characters"
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is no number
        except ValueError as exc:
            problem = f"is not a URL ({exc})"
        else:
            if parts.scheme not in ("http", "https"):
                problem = "must start with http:// or https://"
            elif not parts.hostname:
                problem = "names no host"
            elif parts.username is not None or parts.password is not None:
                problem = "must not carry a user name or password (the signature authenticates)"
            elif any(c.isspace() for c in url):
                problem = "contains white space"
    if problem:
        raise UsageError(
            f"webhook URL {url!r} {problem}; e.g. https://hooks.example.com/certbroker"
        )
    return url


def new_secret(random_bytes: bytes) -> str:
    """The signing secret in Standard Webhooks form: whsec_ + base64 of the key."""
    return SECRET_PREFIX + base64.b64encode(random_bytes).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: v1,<base64 HMAC-SHA256 over id.timestamp.body>
    with the base64-decoded secret (Standard Webhooks)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def retry_delay(
    failures: int,
    *,
    first: timedelta = RETRY_FIRST,
    ceiling: timedelta = RETRY_CEILING,
    rand: Callable[[], float] = random.random,
) -> timedelta:
    """The pause after the `failures`-th failed attempt in a row (1, 2, …): `first`,
    doubling, at most an hour; up to 10 % shorter at random."""
    steps = max(0, failures - 1)
    pause = min(first * (2 ** min(steps, 30)), ceiling) if first < ceiling else ceiling
    return pause * (1 - RETRY_JITTER * rand())


def next_try(
    first_attempt: datetime, now: datetime, failures: int, first: timedelta = RETRY_FIRST
) -> datetime | None:
    """When to try again after a failed attempt; None: the day is over, it is dead."""
    when = now + retry_delay(failures, first=first)
    return None if when > first_attempt + RETRY_WINDOW else when


@dataclass(frozen=True)
class Webhook:
    id: int
    url: str
    events: tuple[str, ...]  # EVENT_GROUPS names
    format: WebhookFormat
    allow_private: bool
    description: str | None
    enabled: bool
    disabled_reason: str | None
    after_event_id: int  # it gets the events after this one (those after it was added)
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "format": self.format.value,
            "allow_private": self.allow_private,
            "description": self.description,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook_id: int
    event_id: int | None  # None: a test message
    message_id: str  # the webhook-id header, the same on every attempt
    kind: str  # the event kind, or webhook.test
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_try_at: datetime | None = None
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status: int | None = None  # the receiver's HTTP status
    last_response: str | None = None  # the first 300 bytes of its answer
    last_error: str | None = None
    delivered_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        def at(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "message_id": self.message_id,
            "kind": self.kind,
            "state": self.state.value,
            "attempts": self.attempts,
            "created_at": at(self.created_at),
            "next_try_at": at(self.next_try_at),
            "first_attempt_at": at(self.first_attempt_at),
            "last_attempt_at": at(self.last_attempt_at),
            "last_status": self.last_status,
            "last_response": self.last_response,
            "last_error": self.last_error,
            "delivered_at": at(self.delivered_at),
        }
