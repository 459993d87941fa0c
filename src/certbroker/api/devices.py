"""`/api/v1/csr`: a client (device, gateway) sends a CSR, the key stays with it; the
broker orders with its own account and hands back the chain. A client authenticates
with its own token (`certbroker client add`) and sees only its own requests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from certbroker.api.auth import BrokerDep, address_of, broker_of
from certbroker.api.problems import ERRORS
from certbroker.domain.clients import Client
from certbroker.domain.errors import NotAuthenticated, NotFoundError
from certbroker.domain.models import CertificateStatus, ChallengeType
from certbroker.wiring import Broker

router = APIRouter(tags=["device CSRs"], responses=ERRORS)


def client_caller(request: Request) -> Client:
    """The client of this request, by its token (`Authorization: Bearer cbc_…`)."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise NotAuthenticated(
            "a client sends its token as 'Authorization: Bearer cbc_…' (`certbroker client add`)"
        )
    return broker_of(request).clients.authenticate(secret.strip(), address_of(request))


ClientDep = Annotated[Client, Depends(client_caller)]


class CsrBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csr: Annotated[str, Field(min_length=1, max_length=65536)] = Field(
        description="The CSR, PEM or DER in base64. Only its names and public key are used."
    )
    challenge: Literal["http-01", "dns-01"] = "http-01"


class CsrState(BaseModel):
    id: int
    state: Literal["pending", "valid", "failed", "revoked", "expired"]
    names: list[str]
    not_after: str | None = None
    serial: str | None = None
    chain: str | None = Field(None, description="PEM: the certificate and its intermediates.")
    problem: dict[str, Any] | None = Field(None, description="The CA's problem, when failed.")
    error: str | None = None


def _state(broker: Broker, client: Client, cert_id: int) -> dict[str, Any]:
    cert = broker.certificates.get(cert_id)
    if cert.client_id != client.id:  # another's, or an operator's: not there for this client
        raise NotFoundError(f"no CSR request with ID {cert_id}")
    status = cert.effective_status(broker.ctx.clock())
    found: dict[str, Any] = {"id": cert.id, "state": status.value, "names": list(cert.names)}
    if cert.cert_pem is not None:
        found |= {
            "not_after": cert.not_after.isoformat() if cert.not_after else None,
            "serial": cert.serial,
            "chain": cert.cert_pem + (cert.chain_pem or ""),
        }
    if status is CertificateStatus.FAILED:
        last = broker.browsing.orders(cert_id)[-1:]
        if last:
            found |= {"problem": last[0]["problem"], "error": last[0]["error"]}
    return found


@router.post("/csr", status_code=202, response_model=CsrState)
def submit_csr(body: CsrBody, client: ClientDep, broker: BrokerDep) -> JSONResponse:
    """Order a certificate for a CSR: 202 and its ID; follow `GET /csr/{id}`. Names off
    the client's allow-list: 403, a bad CSR: 422, and nothing is ordered."""
    cert = broker.requests.request_from_csr(client, body.csr, ChallengeType(body.challenge))
    return JSONResponse(
        _state(broker, client, cert.id),
        status_code=202,
        headers={"Location": f"/api/v1/csr/{cert.id}"},
    )


@router.get("/csr/{cert_id}", response_model=CsrState)
def csr_state(
    cert_id: Annotated[int, Path(ge=1, le=2**31 - 1)], client: ClientDep, broker: BrokerDep
) -> dict[str, Any]:
    """Where it stands: pending, valid (with the chain), failed (with the CA's problem)."""
    return _state(broker, client, cert_id)
