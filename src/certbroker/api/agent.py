"""`/api/v1/agent/ws`: the gateway agents' one connection.

The agent authenticates with its client's token and says `hello` with the certificates
it wants; from then on it is sent, as they change, the HTTP-01 tokens of the names it
may obtain (`tokens`: the whole set each time) and the certificates it installs
(`certificate`), and `renew` when a certificate whose key it keeps is due; it sends
`ack` (the tokens it now answers), `csr` and `installed` (what it installed, or why not).

One task per process (the hub) looks at the store every HUB_TICK for all the agents
connected to it: the tokens out now and the certificates issued since its last look.
The store is the source, so an agent may be connected to any node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from certbroker.api.devices import client_connections
from certbroker.api.problems import status_of
from certbroker.domain.agents import KeyMode
from certbroker.domain.audit import ActorKind
from certbroker.domain.clients import Client, connection_refusal
from certbroker.domain.errors import CertbrokerError, NotAuthenticated, StoreUnavailable
from certbroker.services.agents import Wanted
from certbroker.services.audit import act_as
from certbroker.services.outage import store_outage
from certbroker.wiring import Broker

log = logging.getLogger("certbroker.api")
router = APIRouter(tags=["gateway agents"])

HUB_TICK = 0.25  # seconds between the hub's looks at the store
SEND_TIMEOUT = 10.0  # seconds one message to one agent may take
TOUCH_EVERY = 30.0  # seconds between "still connected" marks in the store
RENEW_LOOK = 60.0  # seconds between looks for certificates due for the agent's renewal


class WantedBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(min_length=1, max_length=100)
    key: Literal["local", "broker"] = "local"


class Hello(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["hello"]
    certificates: list[WantedBody] = Field(max_length=1000)
    agent: str | None = Field(None, max_length=200)


class Ack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ack"]
    tokens: list[str] = Field(max_length=10_000)


class Csr(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["csr"]
    csr: str = Field(min_length=1, max_length=65536)


class Installed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["installed"]
    certificate_id: int
    serial: str = Field(max_length=80)
    not_after: datetime | None = None
    ok: bool
    reload_status: int | None = None
    output_tail: str = Field("", max_length=100_000)
    error: str | None = Field(None, max_length=10_000)


@dataclass(eq=False)
class Connection:
    """One agent's connection: as little as can be kept per agent (a thousand of them
    share a node), no queue and no task of its own besides the one reading it."""

    client: Client
    websocket: WebSocket
    tokens: dict[str, str] = field(default_factory=dict)  # what it was sent last

    async def send(self, message: dict[str, Any]) -> bool:
        """Send; False when the agent is gone (its own loop ends the connection)."""
        try:
            await asyncio.wait_for(self.websocket.send_json(message), SEND_TIMEOUT)
        except (WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
            return False
        return True


class Hub:
    """The agents connected to this process, and the one task that looks at the store
    for all of them."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connections: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None

    def join(self, conn: Connection) -> None:
        self.connections.add(conn)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def leave(self, conn: Connection) -> None:
        self.connections.discard(conn)

    async def _run(self) -> None:
        agents = self.broker.agents
        cursor: int | None = None
        while cursor is None:  # the store may be away as the first agent connects
            try:
                cursor = await run_in_threadpool(agents.start_cursor)
            except StoreUnavailable as exc:
                store_outage.lost(exc)
                await asyncio.sleep(HUB_TICK)
                if not self.connections:
                    return
        loop = asyncio.get_running_loop()
        touched = loop.time()
        while self.connections:
            try:
                connected = await self._still_allowed()
                changes = await run_in_threadpool(agents.changes, cursor)
                cursor = changes.cursor
                deliveries: dict[int, list[dict[str, Any]]] = {}
                if changes.issued and connected:
                    deliveries = await run_in_threadpool(
                        agents.deliveries_to, changes.issued, connected
                    )
                for conn in list(self.connections):
                    client = connected.get(conn.client.id)
                    if client is None:
                        continue
                    tokens = agents.tokens_for(client, changes.tokens)
                    if tokens != conn.tokens:
                        conn.tokens = tokens
                        await conn.send({"type": "tokens", "tokens": tokens})
                    for message in deliveries.get(conn.client.id, []):
                        await conn.send(message)
                del deliveries  # the keys in it are not kept between looks
                if loop.time() - touched >= TOUCH_EVERY:
                    touched = loop.time()
                    ids = sorted({c.client.id for c in self.connections})
                    await run_in_threadpool(agents.still_connected, ids)
                store_outage.answered()
            except StoreUnavailable as exc:  # one line for the outage; keep looking
                store_outage.lost(exc)
            except Exception:  # the store may be away for a moment; keep looking
                log.exception("agent hub: looking at the store failed")
            await asyncio.sleep(HUB_TICK)

    async def _still_allowed(self) -> dict[int, Client]:
        """The connected clients as they are now; a connection whose client was deleted,
        disabled or given a new token since it authenticated is closed (1008, policy),
        whichever node changed the client: the store says so at the next look."""
        conns = list(self.connections)
        now = await run_in_threadpool(self.broker.agents.clients_now, [c.client.id for c in conns])
        allowed: dict[int, Client] = {}
        for conn in conns:
            why = connection_refusal(conn.client, now.get(conn.client.id))
            if why is None:
                allowed[conn.client.id] = now[conn.client.id]
                continue
            self.leave(conn)
            log.info("agent of %s: closing its connection: %s", conn.client.name, why)
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await conn.websocket.close(code=1008, reason=why[:120])
        return allowed


def _hub(websocket: WebSocket) -> Hub:
    state = websocket.app.state
    if getattr(state, "agent_hub", None) is None:
        state.agent_hub = Hub(state.broker)
    hub: Hub = state.agent_hub
    return hub


async def _authenticate(websocket: WebSocket, broker: Broker) -> Client | None:
    scheme, _, secret = websocket.headers.get("authorization", "").partition(" ")
    address = websocket.client.host if websocket.client else "unknown"
    try:
        if scheme.lower() != "bearer" or not secret.strip():
            raise NotAuthenticated("an agent sends its token as 'Authorization: Bearer cbc_…'")
        client = await run_in_threadpool(broker.clients.authenticate, secret.strip(), address)
    except NotAuthenticated as exc:
        await run_in_threadpool(
            broker.audit.refused, "WEBSOCKET", websocket.url.path, str(exc), 403
        )
        await websocket.close(code=1008)  # before accepting: the handshake is refused (403)
        return None
    act_as(ActorKind.CLIENT, client.name)  # the audit log's actor
    return client


@router.websocket("/agent/ws")
async def agent_socket(websocket: WebSocket) -> None:
    """The agent's connection; see the module's description for the messages. One more
    than its client may have open (client_connections) is closed at once (1008)."""
    broker: Broker = websocket.app.state.broker
    client = await _authenticate(websocket, broker)
    if client is None:
        return
    connections = client_connections(websocket)
    with connections.held(client) as refused:
        await websocket.accept()
        if refused is not None:  # accepted first, so the agent reads why
            await websocket.close(code=1008, reason=connections.close_reason())
            return
        await _agent_session(websocket, broker, client)


async def _agent_session(websocket: WebSocket, broker: Broker, client: Client) -> None:
    """An agent's connection, accepted: its hello, then what it is sent and says."""
    conn = Connection(client, websocket)
    hub = _hub(websocket)
    try:
        first = await websocket.receive_json()
        hello = Hello.model_validate(first)
    except (ValidationError, ValueError, KeyError):
        await websocket.send_json(
            {"type": "error", "status": 422, "detail": 'say {"type": "hello", ...} first'}
        )
        await websocket.close(code=1008)
        return
    except WebSocketDisconnect:
        return
    wanted = [Wanted(w.names, KeyMode(w.key)) for w in hello.certificates]
    del first, hello
    hub.join(conn)
    try:
        await _greet(websocket, broker, client, wanted)
        del wanted
        await _serve(websocket, broker, conn)
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # the agent went away (also while it was being sent something)
    finally:
        hub.leave(conn)


async def _greet(
    websocket: WebSocket, broker: Broker, client: Client, wanted: list[Wanted]
) -> None:
    """The answer to hello, then what the agent has not installed yet (in a frame of
    its own, so no certificate or key stays referenced while the connection lasts)."""
    answers = await run_in_threadpool(broker.agents.hello, client, wanted)
    await websocket.send_json({"type": "welcome", "client": client.name,
                               "certificates": answers})  # fmt: skip
    for message in await run_in_threadpool(broker.agents.deliveries, client):
        await websocket.send_json(message)


async def _serve(websocket: WebSocket, broker: Broker, conn: Connection) -> None:
    """Read the agent's messages; once a minute, tell it of certificates due for the
    renewal it does itself (`local` keys)."""
    loop = asyncio.get_running_loop()
    told: set[tuple[int, str | None]] = set()
    next_look = loop.time()
    while True:
        if loop.time() >= next_look:
            next_look = loop.time() + RENEW_LOOK
            for due in await run_in_threadpool(broker.devices.due_renewals, conn.client):
                if (due["certificate_id"], due["renew_at"]) not in told:
                    told.add((due["certificate_id"], due["renew_at"]))
                    await conn.send({"type": "renew", **due})
        try:
            received: Any = await asyncio.wait_for(
                websocket.receive_json(), max(next_look - loop.time(), 0.05)
            )
        except TimeoutError:
            continue
        except (ValueError, KeyError):  # not JSON, or a binary frame
            await conn.send({"type": "error", "status": 400, "detail": "send JSON messages"})
            continue
        reply = await run_in_threadpool(answer, broker, conn.client, received)
        if reply is not None:
            await conn.send(reply)


def answer(broker: Broker, client: Client, message: Any) -> dict[str, Any] | None:
    """An agent's message (ack, csr, installed), over the websocket or a long poll: the
    reply to send back, if any. Runs in the thread pool."""
    kind = message.get("type") if isinstance(message, dict) else None
    try:
        if kind == "ack":
            ack = Ack.model_validate(message)
            broker.agents.acknowledge(client, ack.tokens)
            return None
        if kind == "csr":
            csr = Csr.model_validate(message)
            request = broker.agents.submit_csr(client, csr.csr)
            return {"type": "csr", "request": request.to_json()}
        if kind == "installed":
            done = Installed.model_validate(message)
            broker.agents.report(
                client,
                done.certificate_id,
                serial=done.serial,
                not_after=done.not_after,
                ok=done.ok,
                reload_status=done.reload_status,
                output_tail=done.output_tail,
                error=done.error,
            )
            return None
        return {"type": "error", "status": 400, "detail": f"unknown message type {kind!r}"}
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return {"type": "error", "status": 422, "detail": f"{kind}: {where}: {first['msg']}"}
    except CertbrokerError as exc:
        status, _ = status_of(exc)
        return {"type": "error", "status": status, "detail": str(exc), "about": kind}
