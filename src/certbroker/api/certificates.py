"""`/api/v1/certificates` and `/api/v1/orders`: request, list, show, download, renew,
revoke, delete; orders and their challenges; the live progress of an order."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from certbroker.api.auth import BrokerDep, Deleter, Operator, Reader, Revoker
from certbroker.api.idempotency import idempotent
from certbroker.api.problems import ERRORS
from certbroker.domain.access import Principal
from certbroker.domain.errors import NotFoundError, StoreUnavailable
from certbroker.domain.keys import ExportFormat, KeyPolicy, KeyType, RevocationReason
from certbroker.domain.models import CertificateStatus, ChallengeType
from certbroker.services.certificates import MEDIA_TYPES
from certbroker.services.outage import store_outage
from certbroker.wiring import Broker

router = APIRouter(tags=["certificates"], responses=ERRORS)

Text200 = Annotated[str, Field(max_length=200)]
KeyTypeName = Literal["ec-p256", "ec-p384", "rsa2048", "rsa3072", "rsa4096"]
FormatName = Literal["pem", "fullchain", "combined", "der", "pkcs12", "jks"]


class SubjectFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    country: Annotated[str, Field(max_length=2)] | None = None
    state: Text200 | None = None
    city: Text200 | None = None
    org: Text200 | None = None
    ou: Text200 | None = None
    email: Text200 | None = None


class CertificateRequestBody(BaseModel):
    """Every option of `certbroker cert request`."""

    model_config = ConfigDict(extra="forbid")
    names: Annotated[list[Annotated[str, Field(max_length=1000)]], Field(min_length=1)]
    label: Text200 | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    account: Text200 | None = None
    fallback_accounts: Annotated[list[Text200], Field(max_length=10)] = []
    challenge: Literal["http-01", "dns-01"] = "http-01"
    dns_account: Text200 | None = None
    key_type: KeyTypeName | None = None
    key_policy: Literal["new", "reuse", "imported"] = "new"
    key_pem: Annotated[str, Field(max_length=20000)] | None = None
    subject: SubjectFields | None = None
    renew_before_days: Annotated[float, Field(gt=0, lt=10000)] | None = None
    profile: Annotated[str, Field(max_length=100)] | None = None
    keystore_type: FormatName | None = None
    keystore_password: Annotated[str, Field(max_length=200)] | None = None


class Queued(BaseModel):
    id: int
    order_id: int
    status: str


class CertificateSummary(BaseModel):
    id: int
    label: str | None
    names: list[str]
    status: str
    not_before: str | None
    not_after: str | None
    days_left: int | None
    serial: str | None
    account: str | int
    next_try_at: str | None
    disabled: bool


class CertificatePage(BaseModel):
    items: list[CertificateSummary]
    next: str | None = Field(description="Cursor of the next page; null on the last.")


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: FormatName | None = Field(
        None, description="Default: the keystore type kept with the certificate, else fullchain."
    )
    password: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="pkcs12 and jks; default: the password kept with the certificate."
    )


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Literal[
        "unspecified",
        "keyCompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
    ] = "unspecified"


class Deleted(BaseModel):
    id: int
    deleted: bool
    note: str


def visible(broker: Broker, principal: Principal, cert_id: int) -> None:
    """A name-limited caller sees only its certificates: others do not exist for it."""
    if principal.names and not principal.may_see(broker.certificates.get(cert_id).names):
        raise NotFoundError(f"no certificate with ID {cert_id}")


CertId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.post("/certificates", status_code=202, response_model=Queued)
def request_certificate(
    body: CertificateRequestBody, request: Request, principal: Operator, broker: BrokerDep
) -> Response:
    """Request a certificate; `certbroker serve`'s workers obtain it. Answers 202 with its
    ID and a Location; follow it at `/certificates/{id}/progress/stream`."""
    from certbroker.domain.subject import Subject
    from certbroker.services.requests import CertificateRequest

    def work() -> JSONResponse:
        broker.access.require_names(principal, body.names)
        subject = Subject(**body.subject.model_dump()) if body.subject else None
        req = CertificateRequest(
            names=body.names,
            account=body.account,
            fallback_accounts=body.fallback_accounts,
            challenge=ChallengeType(body.challenge),
            key_type=KeyType(body.key_type) if body.key_type else None,
            key_policy=KeyPolicy(body.key_policy),
            key_pem=body.key_pem.encode() if body.key_pem else None,
            subject=subject,
            renew_before_days=body.renew_before_days,
            profile=body.profile,
            dns_account=body.dns_account,
            label=body.label,
            description=body.description,
            keystore_type=ExportFormat(body.keystore_type) if body.keystore_type else None,
            keystore_password=body.keystore_password,
        )
        cert, order = broker.requests.request(req)
        return queued(cert.id, order.id)

    def replay(done: str) -> JSONResponse:  # "certificate:ID:ORDER", as the first answered
        _, cert_id, order_id = done.split(":")
        return queued(int(cert_id), int(order_id))

    return idempotent(request, principal, body, work, replay)


def queued(cert_id: int, order_id: int) -> JSONResponse:
    """The answer to a certificate request: its ID, its first order, pending."""
    return JSONResponse(
        {"id": cert_id, "order_id": order_id, "status": CertificateStatus.PENDING.value},
        status_code=202,
        headers={"Location": f"/api/v1/certificates/{cert_id}"},
    )


@router.get("/certificates", response_model=CertificatePage)
def list_certificates(
    principal: Reader,
    broker: BrokerDep,
    status: CertificateStatus | None = None,
    search: Annotated[str | None, Query(max_length=253)] = None,
    expiring_within: Annotated[
        int | None, Query(ge=0, le=36500, description="Days: valid ones expiring within.")
    ] = None,
    sort: Annotated[
        Literal["id", "-id", "expires", "-expires", "name", "-name", "created", "-created"],
        Query(description="A '-' first: descending."),
    ] = "id",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """Certificates, a page at a time: follow `next` as `cursor` for the next page."""
    page = broker.browsing.page(
        limit_to=principal.names,
        status=status,
        search=search,
        expiring_within_days=expiring_within,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    accounts = {a.id: a for a in broker.accounts.all()}
    return {
        "items": [broker.certificates.summary(c, accounts) for c in page.items],
        "next": page.next,
    }


@router.get("/certificates/{cert_id}", response_model=dict[str, Any])
def show_certificate(cert_id: CertId, principal: Reader, broker: BrokerDep) -> dict[str, Any]:
    """Status, dates, history, attempts and events, as `cert show --json`."""
    visible(broker, principal, cert_id)
    return broker.certificates.details(cert_id)


@router.get(
    "/certificates/{cert_id}/chain",
    response_class=Response,
    responses={200: {"content": {"application/pem-certificate-chain": {}}}},
)
def certificate_chain(cert_id: CertId, principal: Reader, broker: BrokerDep) -> Response:
    """The certificate and its intermediates, PEM; never the key."""
    visible(broker, principal, cert_id)
    return Response(
        broker.certificates.chain(cert_id), media_type="application/pem-certificate-chain"
    )


@router.post(
    "/certificates/{cert_id}/export",
    response_class=Response,
    responses={
        200: {
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in sorted(set(MEDIA_TYPES.values()))
            },
            "description": "The file.",
        }
    },
)
def export_certificate(
    cert_id: CertId, body: ExportBody, principal: Reader, broker: BrokerDep
) -> Response:
    """The certificate as a file: pem (a zip of cert, chain, fullchain and key),
    fullchain, combined, der, pkcs12 or jks. Formats holding the key need operator."""
    return download(broker, principal, cert_id, body.format, body.password)


def download(
    broker: Broker, principal: Principal, cert_id: int, fmt: str | None, password: str | None
) -> Response:
    """The file of one download, as an attachment nobody caches."""
    file = broker.certificates.download(
        principal, cert_id, ExportFormat.parse(fmt) if fmt else None, password
    )
    return Response(
        file.data,
        media_type=file.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{file.filename}"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/certificates/{cert_id}/renew", status_code=202, response_model=Queued)
def renew_certificate(
    cert_id: CertId, request: Request, principal: Operator, broker: BrokerDep
) -> Response:
    """Renew now, due or not (or try a failed one again); `serve` does the work."""

    def work() -> JSONResponse:
        visible(broker, principal, cert_id)
        order = broker.renewal.renew(cert_id)
        cert = broker.certificates.get(cert_id)
        return JSONResponse(
            {"id": cert_id, "order_id": order.id, "status": cert.status.value},
            status_code=202,
            headers={"Location": f"/api/v1/certificates/{cert_id}"},
        )

    return idempotent(request, principal, None, work)


@router.post("/certificates/{cert_id}/revoke", response_model=dict[str, Any])
def revoke_certificate(
    cert_id: CertId, body: RevokeBody, request: Request, principal: Revoker, broker: BrokerDep
) -> Response:
    """Revoke at the CA, with a reason (RFC 5280)."""

    def work() -> JSONResponse:
        visible(broker, principal, cert_id)
        broker.certificates.revoke(cert_id, RevocationReason(body.reason))
        return JSONResponse(broker.certificates.details(cert_id))

    return idempotent(request, principal, body, work)


@router.delete("/certificates/{cert_id}", response_model=Deleted)
def delete_certificate(cert_id: CertId, principal: Deleter, broker: BrokerDep) -> dict[str, Any]:
    """Forget the certificate and its key here. It stays valid at the CA until it
    expires: revoke it first if it must stop working."""
    visible(broker, principal, cert_id)
    cert = broker.certificates.delete(cert_id)
    note = (
        "deleted here; it stays valid at the CA until it expires"
        if cert.cert_pem and cert.status is CertificateStatus.VALID
        else "deleted here"
    )
    return {"id": cert_id, "deleted": True, "note": note}


@router.post("/certificates/{cert_id}/disable", response_model=dict[str, Any])
def disable_certificate(cert_id: CertId, principal: Operator, broker: BrokerDep) -> dict[str, Any]:
    """Stop its retries and renewal until enabled again."""
    visible(broker, principal, cert_id)
    broker.renewal.disable(cert_id)
    return broker.certificates.details(cert_id)


@router.post("/certificates/{cert_id}/enable", response_model=dict[str, Any])
def enable_certificate(cert_id: CertId, principal: Operator, broker: BrokerDep) -> dict[str, Any]:
    """Renew and retry it again."""
    visible(broker, principal, cert_id)
    broker.renewal.enable(cert_id)
    return broker.certificates.details(cert_id)


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_challenge: bool = Field(
        False, description="Start over with a new order at the CA (new TXT values)."
    )


@router.post("/certificates/{cert_id}/verify", status_code=202, response_model=dict[str, Any])
def verify_dns_records(
    cert_id: CertId, body: VerifyBody, principal: Operator, broker: BrokerDep
) -> JSONResponse:
    """Manual DNS-01: check the TXT records a person wrote and go on to the certificate
    (or, with `new_challenge`, start over for new values). Follow it at
    `/certificates/{id}/progress/stream`."""
    from certbroker.services.leases import make_owner

    visible(broker, principal, cert_id)
    broker.issuance.verify_in_background(cert_id, make_owner("api"), body.new_challenge)
    return JSONResponse(broker.browsing.progress(cert_id), status_code=202)


@router.get("/certificates/{cert_id}/orders", response_model=list[dict[str, Any]])
def certificate_orders(
    cert_id: CertId, principal: Reader, broker: BrokerDep
) -> list[dict[str, Any]]:
    """Every order (attempt) of the certificate, oldest first."""
    visible(broker, principal, cert_id)
    return broker.browsing.orders(cert_id)


@router.get("/orders/{order_id}", response_model=dict[str, Any])
def show_order(order_id: CertId, principal: Reader, broker: BrokerDep) -> dict[str, Any]:
    """One order, with the challenges it is answering now and its TXT records."""
    cert_id, data = broker.browsing.order(order_id)
    if principal.names:
        try:
            visible(broker, principal, cert_id)
        except NotFoundError:
            raise NotFoundError(f"no order with ID {order_id}") from None
    return data


@router.get("/certificates/{cert_id}/progress", response_model=dict[str, Any])
def certificate_progress(cert_id: CertId, principal: Reader, broker: BrokerDep) -> dict[str, Any]:
    """Where its order stands now: state, each name's challenge, the last error."""
    visible(broker, principal, cert_id)
    return broker.browsing.progress(cert_id)


POLL = 0.5  # seconds between looks at the store
HEARTBEAT = 15.0
LONGEST_STREAM = 900.0


@router.get(
    "/certificates/{cert_id}/progress/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def certificate_progress_stream(
    cert_id: CertId, principal: Reader, broker: BrokerDep
) -> StreamingResponse:
    """Server-sent events: a `progress` event each time the order moves, until it ends
    (then one `done` event). The store is the source, so any node serves it."""
    visible(broker, principal, cert_id)
    first = broker.browsing.progress(cert_id)

    async def events() -> AsyncIterator[str]:
        # Async, so a stream waits without holding one of the threads requests run in;
        # only the look at the store runs in one.
        last: str | None = None
        current = first
        started = quiet = time.monotonic()
        while True:
            text = json.dumps(current, separators=(",", ":"))
            if text != last:
                yield f"event: progress\ndata: {text}\n\n"
                last, quiet = text, time.monotonic()
            if not current["active"]:
                yield f"event: done\ndata: {text}\n\n"
                return
            if time.monotonic() - started > LONGEST_STREAM:
                return  # the client reconnects (EventSource does by itself)
            if time.monotonic() - quiet > HEARTBEAT:
                yield ": still working\n\n"
                quiet = time.monotonic()
            await asyncio.sleep(POLL)
            try:
                current = await run_in_threadpool(broker.browsing.progress, cert_id)
            except NotFoundError:
                yield 'event: done\ndata: {"deleted":true}\n\n'
                return
            except StoreUnavailable as exc:  # the stream stays open: heartbeats, then news
                store_outage.lost(exc)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
