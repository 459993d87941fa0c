"""The console's Webhooks page: the webhooks, adding one (its signing secret shown once),
each one's delivery log with dead deliveries marked and a Retry button, a test message.
The admin's alone, as in the API and the CLI."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from certbroker.domain.access import Action
from certbroker.domain.errors import AccessDenied, UsageError
from certbroker.domain.webhooks import EVENT_GROUPS, WebhookFormat
from certbroker.web.common import (
    ConsoleRoute,
    Form,
    Who,
    acting,
    field_errors,
    redirect,
    render,
    text,
    texts,
    who,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
WebhookId = Annotated[int, Path(ge=1, le=2**31 - 1)]
DeliveryId = Annotated[int, Path(ge=1, le=2**31 - 1)]
FORMATS = [
    ("json", "JSON (Standard Webhooks payload)"),
    ("slack", "Slack incoming webhook"),
    ("teams", "Microsoft Teams incoming webhook"),
]
EVENT_LABELS = {
    "issued": "issued: a first certificate arrived",
    "renewed": "renewed: a renewal arrived",
    "failed": "failed: an attempt failed (and when it failed for good)",
    "expiring": "expiring: a certificate entered an expiry threshold",
    "revoked": "revoked",
    "alarm": "alarm: raised, cleared, acknowledged",
    "deployed": "deployed: to push targets and gateway agents (or failed to)",
}
FIELDS: dict[str, tuple[str, ...]] = {
    "events": ("--events", "event"),
    "format": ("--format",),
    "description": ("--description",),
    "url": ("url", "address", "host", "resolve"),
}
SHOWN = 50  # deliveries per webhook on the page


def _page(
    request: Request,
    person: Who,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    created: dict[str, Any] | None = None,
    open_id: int | None = None,
    status_code: int = 200,
) -> Response:
    service = person.broker.webhooks
    hooks = service.all()
    return render(
        request,
        person,
        "webhooks.html",
        status_code=status_code,
        webhooks=hooks,
        deliveries={w.id: service.deliveries(w.id, limit=SHOWN) for w in hooks},
        events=[(g, EVENT_LABELS.get(g, g)) for g in EVENT_GROUPS],
        formats=FORMATS,
        values=values or {"events": [], "format": "json"},
        errors=errors or {},
        created=created,
        open_id=open_id,
    )


@router.get("/webhooks")
def webhooks(request: Request, open: int | None = None) -> Response:
    person = who(request)
    person.require(Action.MANAGE)
    return _page(request, person, open_id=open)


@router.post("/webhooks")
def add_webhook(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values: dict[str, Any] = {
        "url": text(form, "url"),
        "events": texts(form, "events"),
        "format": text(form, "format") or "json",
        "allow_private": form.get("allow_private") == "1",
        "description": text(form, "description"),
    }
    try:
        if not values["events"]:
            raise UsageError("choose at least one event")
        webhook, secret = person.broker.webhooks.add(
            values["url"],
            values["events"],
            WebhookFormat.parse(values["format"]),
            allow_private=bool(values["allow_private"]),
            description=values["description"] or None,
        )
    except UsageError as exc:
        if isinstance(exc, AccessDenied):
            raise
        errors = field_errors(str(exc), FIELDS, default="url")
        return _page(request, person, values, errors, status_code=422)
    return _page(request, person, created={"webhook": webhook, "secret": secret})


def _back(webhook_id: int) -> str:
    return f"/webhooks?open={webhook_id}#webhook-{webhook_id}"


@router.post("/webhooks/{webhook_id}/test")
def test_webhook(request: Request, webhook_id: WebhookId, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    delivery = person.broker.webhooks.test(webhook_id)
    if delivery.state.value == "delivered":
        return redirect(
            request,
            _back(webhook_id),
            f"Test message delivered: the receiver answered {delivery.last_status}.",
        )
    return redirect(
        request,
        _back(webhook_id),
        f"Test message NOT delivered: {delivery.last_error or delivery.last_status}",
        "error",
    )


@router.post("/webhooks/{webhook_id}/{action}")
def webhook_action(request: Request, webhook_id: WebhookId, action: str, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    service = person.broker.webhooks
    if action in ("enable", "disable"):
        service.set_enabled(webhook_id, action == "enable")
        return redirect(request, _back(webhook_id), f"Webhook {webhook_id} is {action}d.")
    if action == "delete":
        webhook = service.delete(webhook_id)
        return redirect(request, "/webhooks", f"Webhook {webhook.id} ({webhook.url}) deleted.")
    raise UsageError(f"no webhook action {action!r}")


@router.post("/webhook-deliveries/{delivery_id}/retry")
def retry_delivery(request: Request, delivery_id: DeliveryId, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    try:
        delivery = person.broker.webhooks.retry(delivery_id)
    except UsageError as exc:
        if isinstance(exc, AccessDenied):
            raise
        return redirect(request, "/webhooks", str(exc), "error")
    return redirect(
        request,
        _back(delivery.webhook_id),
        f"Delivery {delivery.id} queued again; it goes out within a few seconds.",
    )
