"""Mail over the API: the same service as `certbroker notify` and
`certbroker alarms ack`. The SMTP settings, test mails and the mail log are an admin's;
acknowledging a certificate's alarm and choosing who gets its mails are an operator's,
for the certificates the operator's token may see."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from certbroker.api.auth import Admin, BrokerDep, Operator
from certbroker.api.certificates import CertId, visible
from certbroker.api.problems import ERRORS

router = APIRouter(tags=["mail"], responses=ERRORS)
Short = Annotated[str, Field(max_length=255)]


class MailSettings(BaseModel):
    """Only the settings given change; null (or "") puts one back to the configuration's."""

    model_config = ConfigDict(extra="forbid")
    host: Short | None = None
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    security: Short | None = Field(None, description="none, starttls or tls.")
    user: Short | None = None
    password: Short | None = Field(None, description="Sealed at rest; never shown again.")
    sender: Short | None = Field(None, description="The From address.")
    notify_on_issue: bool | None = Field(None, description="Mail issuances and renewals too.")
    digest_to: Annotated[list[Short], Field(max_length=100)] | None = Field(
        None, description="Recipients who get one mail a day instead of one per event."
    )
    expiry_thresholds: Annotated[list[Annotated[int, Field(ge=1, le=365)]],
                                 Field(min_length=1, max_length=20)] | None = None  # fmt: skip


class TestMail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: Short


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    until: datetime = Field(description="Muted until then (ISO 8601; UTC unless it says).")
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class Recipients(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: Annotated[list[Short], Field(max_length=100)] = Field(
        description="Who gets this certificate's mails; [] for the global list."
    )


@router.get("/settings/mail", response_model=dict[str, Any])
def mail_settings(_p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """The mail settings in force; the password only as "(set)"."""
    return broker.notify.settings()


@router.patch("/settings/mail", response_model=dict[str, Any])
def change_mail_settings(body: MailSettings, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Change mail settings for every process and node (they win over the configuration)."""
    return broker.notify.update_settings(**body.model_dump(exclude_unset=True))


@router.post("/notify/test", response_model=dict[str, str])
def test_mail(body: TestMail, _p: Admin, broker: BrokerDep) -> dict[str, str]:
    """Send a test mail now; the SMTP server's answer. A wrong setting is a 422 naming it."""
    return {"to": body.to, "answer": broker.notify.send_test(body.to)}


@router.get("/mail-deliveries", response_model=list[dict[str, Any]])
def mail_deliveries(
    _p: Admin,
    broker: BrokerDep,
    state: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The newest mails, oldest first: to whom, about which event, sent or why not."""
    return broker.notify.deliveries(limit, state)


@router.post("/certificates/{cert_id}/alarm/acknowledge", response_model=dict[str, Any])
def acknowledge_alarm(
    cert_id: CertId, body: Acknowledge, principal: Operator, broker: BrokerDep
) -> dict[str, Any]:
    """Mute the certificate's alarm until a time (no mail about it meanwhile); a new kind
    of failure raises it again. 404 when it has no alarm."""
    visible(broker, principal, cert_id)
    until = (
        body.until if body.until.tzinfo else body.until.replace(tzinfo=broker.ctx.clock().tzinfo)
    )
    broker.notify.acknowledge_alarm(cert_id, until, principal.name, body.reason)
    alarm: dict[str, Any] = broker.certificates.details(cert_id)["alarm"]
    return alarm


@router.put("/certificates/{cert_id}/recipients", response_model=dict[str, Any])
def set_recipients(
    cert_id: CertId, body: Recipients, principal: Operator, broker: BrokerDep
) -> dict[str, Any]:
    """Who gets this certificate's mails: its own list, else the global list, else the
    contacts of its ACME account."""
    visible(broker, principal, cert_id)
    return {"certificate_id": cert_id, "to": broker.notify.set_recipients(cert_id, body.to)}
