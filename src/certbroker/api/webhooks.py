"""Webhooks over the API: the same service as `certbroker webhook`, and an admin's alone
(a webhook sends what happens to every certificate, and a URL is a way out of the
broker's network). The signing secret is in the answer to the POST that adds one, and
nowhere else."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from certbroker.api.auth import Admin, BrokerDep
from certbroker.api.problems import ERRORS

router = APIRouter(tags=["webhooks"], responses=ERRORS)
WebhookId = Annotated[int, Path(ge=1, le=2**31 - 1)]
DeliveryId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2000)] = Field(
        description="Where to POST: http(s)://host[:port]/path."
    )
    events: Annotated[list[Annotated[str, Field(min_length=1, max_length=20)]], Field(
        min_length=1, max_length=20
    )] = Field(
        description="issued, renewed, failed, expiring, revoked, alarm, deployed; or all."
    )  # fmt: skip
    format: Literal["json", "slack", "teams"] = "json"
    allow_private: bool = Field(
        False,
        description="Allow a host at a private, loopback or link-local address (refused "
        "otherwise: server-side request forgery).",
    )
    description: Annotated[str, Field(max_length=500)] | None = None


@router.get("/webhooks", response_model=list[dict[str, Any]])
def list_webhooks(_p: Admin, broker: BrokerDep) -> list[dict[str, Any]]:
    """The webhooks (never their secrets)."""
    return [w.to_json() for w in broker.webhooks.all()]


@router.post("/webhooks", status_code=201, response_model=dict[str, Any])
def add_webhook(body: WebhookBody, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """A new webhook. `secret` (whsec_…) signs every request to it and is shown only in
    this answer. Nothing is stored when the URL, an event name or the address is refused."""
    webhook, secret = broker.webhooks.add(
        body.url,
        body.events,
        body.format,
        allow_private=body.allow_private,
        description=body.description,
    )
    return {**webhook.to_json(), "secret": secret}


@router.get("/webhooks/{webhook_id}", response_model=dict[str, Any])
def show_webhook(webhook_id: WebhookId, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    return broker.webhooks.get(webhook_id).to_json()


@router.delete("/webhooks/{webhook_id}", response_model=dict[str, Any])
def delete_webhook(webhook_id: WebhookId, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Forget the webhook and its delivery log."""
    webhook = broker.webhooks.delete(webhook_id)
    return {"id": webhook.id, "deleted": True}


@router.post("/webhooks/{webhook_id}/test", response_model=dict[str, Any])
def test_webhook(webhook_id: WebhookId, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Send a test message (type `webhook.test`) now; the delivery, with the receiver's
    status (`last_status`) and the start of its answer."""
    return broker.webhooks.test(webhook_id).to_json()


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[dict[str, Any]])
def deliveries(
    webhook_id: WebhookId,
    _p: Admin,
    broker: BrokerDep,
    state: Annotated[
        Literal["queued", "sending", "failed", "delivered", "dead"] | None, Query()
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The webhook's delivery log, newest first."""
    return [d.to_json() for d in broker.webhooks.deliveries(webhook_id, state, limit)]


@router.post("/webhook-deliveries/{delivery_id}/retry", response_model=dict[str, Any])
def retry_delivery(delivery_id: DeliveryId, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """A dead (or failing) delivery is queued again: the same message ID and body, a new
    day of retries; `serve` sends it."""
    return broker.webhooks.retry(delivery_id).to_json()
