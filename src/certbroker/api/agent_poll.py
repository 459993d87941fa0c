"""`POST /api/v1/agent/poll`: the gateway agent's long-poll fallback, for networks whose
proxies break websockets. The same messages as `/api/v1/agent/ws`, carried
by one request at a time: the agent sends what it has to say (`hello` once, then `ack`,
`csr`, `installed`) and is answered, as soon as there is anything or after `wait`
seconds, with what it has not seen yet: the tokens of its names when they differ from
the ones it holds, the certificates it installs whose serial it has not seen, `renew`
for those due. The broker keeps nothing per agent in a process: what the agent holds
and has seen comes with each poll, so any node answers any poll."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from certbroker.api.agent import Hello, answer
from certbroker.api.auth import BrokerDep
from certbroker.api.devices import CONNECTIONS_RETRY, ClientDep, client_connections
from certbroker.api.problems import ERRORS
from certbroker.domain.agents import KeyMode
from certbroker.domain.clients import Client, connection_refusal
from certbroker.domain.errors import NotAuthenticated, Throttled
from certbroker.services.agents import Wanted
from certbroker.wiring import Broker

router = APIRouter(tags=["gateway agents"], responses=ERRORS)
POLL_LOOK = 1.0  # seconds between looks at the store while a poll waits


class Poll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hello: Hello | None = Field(None, description="On the first poll: what the agent wants.")
    messages: Annotated[list[dict[str, Any]], Field(max_length=1000)] = []
    tokens: Annotated[list[str], Field(max_length=10_000)] = Field(
        [], description="The HTTP-01 tokens the agent answers now."
    )
    seen: Annotated[list[str], Field(max_length=100_000)] = Field(
        [],
        description="What it was sent already and handled: `certificate:<id>:<serial>`, "
        "`renew:<id>:<renew_at>` (not sent again while it polls).",
    )
    wait: float = Field(25.0, ge=0, le=55, description="Seconds to wait for something new.")


def _news(broker: Broker, client: Client, held: set[str], seen: set[str]) -> list[dict[str, Any]]:
    """What the agent has not seen, for its client as the store has it now: a client
    deleted, disabled or given a new token while the poll waits ends it (401), and the
    tokens and certificates follow its allow-list as it is now."""
    agents = broker.agents
    current = agents.clients_now([client.id]).get(client.id)
    why = connection_refusal(client, current)
    if why is not None or current is None:
        raise NotAuthenticated(f"{why or 'the client is gone'}: the poll ends")
    found: list[dict[str, Any]] = []
    tokens = agents.tokens_for(current, agents.tokens_out())
    if set(tokens) != held:
        found.append({"type": "tokens", "tokens": tokens})
    for message in agents.deliveries(client):
        if f"certificate:{message['certificate_id']}:{message['serial']}" not in seen:
            found.append(message)
    for due in broker.devices.due_renewals(current):
        if f"renew:{due['certificate_id']}:{due['renew_at']}" not in seen:
            found.append({"type": "renew", **due})
    return found


@router.post("/agent/poll", response_model=list[dict[str, Any]])
async def poll(
    body: Poll, client: ClientDep, broker: BrokerDep, request: Request
) -> list[dict[str, Any]]:
    """What the agent has to say, and what it has not seen yet (see the module). A poll
    counts as one of its client's connections while it runs: one more than the client
    may have open (client_connections) is answered 429 at once."""
    with client_connections(request).held(client) as refused:
        if refused is not None:
            raise Throttled(refused, CONNECTIONS_RETRY)
        return await _poll(body, client, broker)


async def _poll(body: Poll, client: Client, broker: Broker) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    # Connected: once per poll (a write), not at every look while it waits.
    await run_in_threadpool(broker.agents.still_connected, [client.id])
    if body.hello is not None:
        wanted = [Wanted(w.names, KeyMode(w.key)) for w in body.hello.certificates]
        answers = await run_in_threadpool(broker.agents.hello, client, wanted)
        replies.append({"type": "welcome", "client": client.name, "certificates": answers})
    for message in body.messages:
        reply = await run_in_threadpool(answer, broker, client, message)
        if reply is not None:
            replies.append(reply)
    held, seen = set(body.tokens), set(body.seen)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (0 if replies else body.wait)
    while True:
        news = await run_in_threadpool(_news, broker, client, held, seen)
        if news or replies or loop.time() >= deadline:
            return replies + news
        await asyncio.sleep(min(POLL_LOOK, max(deadline - loop.time(), 0)))
