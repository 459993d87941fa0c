"""`/api/v1/csr`: a client (device, gateway) sends a CSR, the key stays with it; the
broker orders with its own account and hands back the chain. A client authenticates
with its own token (`certbroker client add`) and sees only its own requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from certbroker.api.auth import Admin, BrokerDep, address_of, broker_of
from certbroker.api.problems import ERRORS, status_of
from certbroker.domain.audit import ActorKind
from certbroker.domain.clients import (
    Client,
    ClientPolicy,
    Renewal,
    RequestState,
    connection_refusal,
)
from certbroker.domain.errors import CertbrokerError, NotAuthenticated
from certbroker.domain.models import ChallengeType
from certbroker.services.audit import act_as
from certbroker.wiring import Broker

log = logging.getLogger("certbroker.api")
router = APIRouter(tags=["device CSRs"], responses=ERRORS)
CONNECTIONS_RETRY = 30  # seconds a poll refused for the client's connections is asked to wait


class ClientConnections:
    """The connections open to this process, per client: agents' and devices' websockets
    and agents' long polls, at most `limit` of one client at once (the setting
    client_connections). Counted here, not in the store: what it protects is this node's sockets
    and tasks, and every node applies the limit to its own."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[int, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, client: Client) -> Iterator[str | None]:
        """One of the client's connections while the block runs: yields None, or (when
        the client has `limit` open already, and nothing is held) why it may not open."""
        with self._lock:
            count = self._open.get(client.id, 0)
            if count < self.limit:
                self._open[client.id] = count + 1
        if count >= self.limit:
            log.info("client %s: connection refused, %d open already", client.name, count)
            yield (
                f"client {client.name!r} has {count} connection{'s' * (count != 1)} open "
                "to this node (websockets and long polls), the most setting "
                "client_connections (CERTBROKER_CLIENT_CONNECTIONS) allows; close one, or "
                "wait for one to end"
            )
            return
        try:
            yield None
        finally:
            with self._lock:
                left = self._open.pop(client.id) - 1
                if left:
                    self._open[client.id] = left

    def close_reason(self) -> str:
        """A websocket's close reason (at most 123 bytes) when one more was refused."""
        return f"at most {self.limit} connections per client (client_connections); close one"


def client_connections(connection: Request | WebSocket) -> ClientConnections:
    """This process's count of client connections (made at the first one)."""
    state = connection.app.state
    found: ClientConnections | None = getattr(state, "client_connections", None)
    if found is None:
        with _made:
            found = getattr(state, "client_connections", None)
            if found is None:
                found = ClientConnections(state.broker.settings.client_connections)
                state.client_connections = found
    return found


_made = threading.Lock()


def client_caller(request: Request) -> Client:
    """The client of this request, by its token (`Authorization: Bearer cbc_…`)."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise NotAuthenticated(
            "a client sends its token as 'Authorization: Bearer cbc_…' (`certbroker client add`)"
        )
    client = broker_of(request).clients.authenticate(secret.strip(), address_of(request))
    act_as(ActorKind.CLIENT, client.name)  # the audit log's actor
    return client


ClientDep = Annotated[Client, Depends(client_caller)]


class CsrBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csr: Annotated[str, Field(min_length=1, max_length=65536)] = Field(
        description="The CSR, PEM or DER in base64. Only its names and public key are used."
    )
    challenge: Literal["http-01", "dns-01"] = "http-01"
    renewal: Literal["device", "broker"] | None = Field(
        None,
        description="Who renews the certificate: `device` (it sends a fresh CSR for the same "
        "names when `renew_at` comes) or `broker` (with this CSR); default: the client's.",
    )


STATES = Literal[
    "awaiting-approval",
    "denied",
    "superseded",
    "deleted",
    "pending",
    "valid",
    "failed",
    "revoked",
    "expired",
]


class CsrState(BaseModel):
    id: int
    state: STATES
    names: list[str]
    reason: str | None = Field(None, description="Why it was denied.")
    certificate_id: int | None = None
    not_before: str | None = None
    not_after: str | None = None
    serial: str | None = None
    renew_at: str | None = Field(
        None, description="When it is renewed: by the device (a fresh CSR) or the broker."
    )
    renewed_by: Literal["device", "broker"] | None = None
    chain: str | None = Field(None, description="PEM: the certificate and its intermediates.")
    problem: dict[str, Any] | None = Field(None, description="The CA's problem, when failed.")
    error: str | None = None


class ClientCertificate(BaseModel):
    certificate_id: int
    names: list[str]
    state: str
    renewed_by: Literal["device", "broker"]
    renew_at: str | None = None
    not_before: str | None = None
    not_after: str | None = None
    serial: str | None = None
    chain: str | None = None
    error: str | None = None


class DenyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


def _renewal(value: str | None) -> Renewal | None:
    return Renewal(value) if value else None


@router.post("/csr", status_code=202, response_model=CsrState)
def submit_csr(body: CsrBody, client: ClientDep, broker: BrokerDep) -> JSONResponse:
    """Order a certificate for a CSR: 202 and its ID; follow `GET /csr/{id}`. Names off
    the client's allow-list: 403 (or, where its policy is `approve`, the request waits
    for an admin: `awaiting-approval`); a bad CSR: 422; nothing is ordered then. A CSR
    for the names of a certificate the client has renews that certificate (409 while
    it is being renewed already). Beyond the client's limits, nothing is stored or
    ordered: 409 for a certificate more than it may hold (one per exact name on its
    allow-list, and client_zone_certificates more with a `*.zone`), 429 while
    client_pending_requests of its certificates are being obtained or
    client_approval_requests of its requests await an admin."""
    request = broker.devices.request_from_csr(
        client, body.csr, ChallengeType(body.challenge), _renewal(body.renewal)
    )
    return JSONResponse(
        broker.devices.first_state(request),
        status_code=202,
        headers={"Location": f"/api/v1/csr/{request.id}"},
    )


RequestId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("/csr", response_model=list[dict[str, Any]])
def my_requests(client: ClientDep, broker: BrokerDep) -> list[dict[str, Any]]:
    """The client's latest 100 CSR requests, newest first."""
    return [r.to_json() for r in broker.devices.client_requests(client)]


@router.get("/csr/{request_id}", response_model=CsrState)
def csr_state(request_id: RequestId, client: ClientDep, broker: BrokerDep) -> dict[str, Any]:
    """Where it stands: awaiting-approval, denied (with the reason), pending, valid (with
    the chain and `renew_at`), failed (with the CA's problem), superseded (a later CSR
    renews its certificate)."""
    return broker.devices.state(request_id, client)


@router.get("/client/certificates", tags=["device CSRs"], response_model=list[ClientCertificate])
def my_certificates(client: ClientDep, broker: BrokerDep) -> list[dict[str, Any]]:
    """The client's certificates, newest first: state, expiry, when renewal is due."""
    return broker.devices.client_certificates(client)


@router.get(
    "/client/certificates/{cert_id}", tags=["device CSRs"], response_model=ClientCertificate
)
def my_certificate(cert_id: RequestId, client: ClientDep, broker: BrokerDep) -> dict[str, Any]:
    """One of the client's certificates with its chain (another's: 404)."""
    return broker.devices.client_certificate(client, cert_id)


@router.get("/approvals", tags=["approvals"], response_model=list[dict[str, Any]])
def list_approvals(_p: Admin, broker: BrokerDep) -> list[dict[str, Any]]:
    """CSR requests waiting for an admin: names off their client's allow-list."""
    return [r.to_json() for r in broker.devices.requests_in(RequestState.AWAITING_APPROVAL)]


@router.post("/approvals/{request_id}/approve", tags=["approvals"], response_model=CsrState)
def approve(request_id: RequestId, principal: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Let it through: its certificate is obtained as if its names were on the list."""
    broker.devices.approve(request_id, principal.name)
    return broker.devices.state(request_id)


@router.post("/approvals/{request_id}/deny", tags=["approvals"], response_model=CsrState)
def deny(
    request_id: RequestId, body: DenyBody, principal: Admin, broker: BrokerDep
) -> dict[str, Any]:
    """Refuse it, for good (the client may send a new CSR); the reason is shown to it."""
    broker.devices.deny(request_id, principal.name, body.reason)
    return broker.devices.state(request_id)


WS_POLL = 0.5  # seconds between looks at the store for a connection's pending requests
APPROVAL_POLL = 5.0  # ... when all it waits for is an admin's decision
RENEW_LOOK = 60.0  # seconds between looks for the client's certificates due for renewal
# Seconds between looks at the device's client: deleted, disabled or given a new token
# (on any node) closes the connection; a changed allow-list applies to what comes next.
CLIENT_LOOK = 2.0
FINAL = {"valid", "failed", "denied", "revoked", "expired", "superseded", "deleted"}


@router.websocket("/csr/ws")
async def csr_socket(websocket: WebSocket) -> None:
    """One connection per device (as innovaphone's hold one): it sends
    `{"csr": …, "challenge": …, "renewal": …}` as often as it likes, and gets each
    request's state as it changes, the last one with the chain (or the reason it failed
    or was denied). When a certificate its device renews is due, it is told once per
    connection: `{"renew": {"certificate_id", "names", "renew_at", …}}`; it answers with
    a fresh CSR for those names. A refused CSR gets `{"error": {"status", "detail"}}`;
    a connection without a valid client token is refused before it opens, and one more
    than the client may have open (client_connections) is closed at once (1008)."""
    broker: Broker = websocket.app.state.broker
    scheme, _, secret = websocket.headers.get("authorization", "").partition(" ")
    address = websocket.client.host if websocket.client else "unknown"
    try:
        if scheme.lower() != "bearer" or not secret.strip():
            raise NotAuthenticated("a client sends its token as 'Authorization: Bearer cbc_…'")
        client = await run_in_threadpool(broker.clients.authenticate, secret.strip(), address)
    except NotAuthenticated as exc:
        await run_in_threadpool(
            broker.audit.refused, "WEBSOCKET", websocket.url.path, str(exc), 403
        )
        await websocket.close(code=1008)  # before accepting: the handshake is refused (403)
        return
    act_as(ActorKind.CLIENT, client.name)
    connections = client_connections(websocket)
    with connections.held(client) as refused:
        await websocket.accept()
        if refused is not None:  # accepted first, so the device reads why (1008)
            await websocket.close(code=1008, reason=connections.close_reason())
            return
        await _device_session(websocket, broker, client)


async def _device_session(websocket: WebSocket, broker: Broker, client: Client) -> None:
    """A device's connection, accepted: its CSRs, their states, its renewals due."""
    watched: dict[int, str] = {}  # request ID -> the state last sent
    waiting: set[int] = set()  # ... of those, the ones awaiting an admin's approval
    told: set[tuple[int, str | None]] = set()  # (certificate, renew_at) the device was told
    loop = asyncio.get_running_loop()
    next_look = loop.time()
    next_client_look = loop.time() + CLIENT_LOOK
    connected = client
    try:
        while True:
            if loop.time() >= next_client_look:
                next_client_look = loop.time() + CLIENT_LOOK
                now = await run_in_threadpool(broker.agents.clients_now, [client.id])
                why = connection_refusal(connected, now.get(client.id))
                if why is not None:
                    await websocket.close(code=1008, reason=why[:120])
                    return
                client = now[client.id]
            if loop.time() >= next_look:
                next_look = loop.time() + RENEW_LOOK
                for due in await run_in_threadpool(broker.devices.due_renewals, client):
                    if (due["certificate_id"], due["renew_at"]) not in told:
                        told.add((due["certificate_id"], due["renew_at"]))
                        await websocket.send_json({"renew": due})
            # An idle connection costs nothing until a message or the next look for due
            # renewals; a request waiting for a person is looked at less often.
            if not watched:
                timeout = next_look - loop.time()
            elif waiting.issuperset(watched):
                timeout = APPROVAL_POLL
            else:
                timeout = WS_POLL
            timeout = min(timeout, next_client_look - loop.time())
            try:
                message = await asyncio.wait_for(
                    websocket.receive_json(), timeout=max(timeout, 0.05)
                )
            except TimeoutError:
                message = None
            except (ValueError, KeyError):  # not JSON, or a binary frame
                await websocket.send_json(
                    {"error": {"status": 400, "detail": 'send {"csr": "<PEM>"} as JSON'}}
                )
                continue
            if message is not None:
                await _submit(websocket, broker, client, message, watched)
            for request_id, last in list(watched.items()):
                state = await run_in_threadpool(broker.devices.state, request_id, client)
                text = json.dumps(state, sort_keys=True)
                if text != last:
                    await websocket.send_json(state)
                    watched[request_id] = text
                if state["state"] == "awaiting-approval":
                    waiting.add(request_id)
                else:
                    waiting.discard(request_id)
                if state["state"] in FINAL:
                    del watched[request_id]
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # the device went away (also while it was being sent something)


async def _submit(
    websocket: WebSocket,
    broker: Broker,
    client: Client,
    message: Any,
    watched: dict[int, str],
) -> None:
    try:
        body = CsrBody.model_validate(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        await websocket.send_json({"error": {"status": 422, "detail": f"{field}: {first['msg']}"}})
        return
    try:
        request = await run_in_threadpool(
            broker.devices.request_from_csr,
            client,
            body.csr,
            ChallengeType(body.challenge),
            _renewal(body.renewal),
        )
    except CertbrokerError as exc:
        status, _ = status_of(exc)
        await websocket.send_json({"error": {"status": status, "detail": str(exc)}})
        return
    watched[request.id] = ""


# -- clients, for admins ----------------------------------------------------------------

ClientName = Annotated[str, Path(min_length=1, max_length=100)]
Pattern = Annotated[str, Field(min_length=1, max_length=253)]


class ClientBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    allow: Annotated[list[Pattern], Field(max_length=1000)] = []
    wildcard: bool = False
    policy: Literal["deny", "approve"] = "deny"
    account: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="The ACME account its certificates are ordered with."
    )
    renewal: Literal["device", "broker"] = "device"


class ClientChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: Annotated[list[Pattern], Field(max_length=1000)] = []
    remove: Annotated[list[Pattern], Field(max_length=1000)] = []
    wildcard: bool | None = None
    policy: Literal["deny", "approve"] | None = None
    enabled: bool | None = None
    account: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    clear_account: bool = False
    renewal: Literal["device", "broker"] | None = None


@router.get("/clients", tags=["clients"], response_model=list[dict[str, Any]])
def list_clients(_p: Admin, broker: BrokerDep) -> list[dict[str, Any]]:
    """Clients, their allow-lists and when they were last seen (never their tokens)."""
    return [c.to_json() for c in broker.clients.all()]


@router.post("/clients", tags=["clients"], status_code=201, response_model=dict[str, Any])
def add_client(body: ClientBody, _p: Admin, broker: BrokerDep) -> JSONResponse:
    """A new client; `token` in the answer is shown this once and kept only hashed."""
    client, secret = broker.clients.add(
        body.name,
        body.allow,
        body.wildcard,
        ClientPolicy(body.policy),
        account=body.account,
        renewal=Renewal(body.renewal),
    )
    return JSONResponse({**client.to_json(), "token": secret}, status_code=201)


@router.get("/clients/{name}", tags=["clients"], response_model=dict[str, Any])
def show_client(name: ClientName, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """The client, and what its gateway agent installed (serial, when, alarm)."""
    client = broker.clients.get(name)
    return client.to_json() | {"installations": broker.agents.installations(client)}


@router.patch("/clients/{name}", tags=["clients"], response_model=dict[str, Any])
def change_client(
    name: ClientName, body: ClientChange, _p: Admin, broker: BrokerDep
) -> dict[str, Any]:
    """Add or remove allowed patterns, wildcards, the policy, the ACME account, who
    renews, enabled."""
    clients = broker.clients
    client = clients.get(name)
    policy = ClientPolicy(body.policy) if body.policy else None
    if body.add or body.remove or body.wildcard is not None:
        client = clients.allow(client.id, body.add, body.remove, body.wildcard, policy)
        policy = None
    if body.account or body.clear_account or body.renewal or policy:
        client = clients.set(
            client.id,
            account=body.account,
            clear_account=body.clear_account,
            renewal=_renewal(body.renewal),
            policy=policy,
        )
    if body.enabled is not None:
        client = clients.set_enabled(client.id, body.enabled)
    return client.to_json()


@router.post("/clients/{name}/rotate-token", tags=["clients"], response_model=dict[str, Any])
def rotate_client_token(name: ClientName, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """A new token (in `token`, shown once); the old one stops working at once."""
    client, secret = broker.clients.rotate_token(name)
    return {**client.to_json(), "token": secret}


@router.delete("/clients/{name}", tags=["clients"], response_model=dict[str, Any])
def delete_client(name: ClientName, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    return broker.clients.delete(name).to_json()
