"""The audit log over the API (admins only), and the middleware that tells the audit log
who is acting in each request: it starts every request (and websocket) with a fresh
holder carrying the client's address; the authentication fills in the principal
(api/auth.py, api/devices.py, web/common.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.types import ASGIApp, Receive, Scope, Send

from certbroker.api.auth import Admin, BrokerDep
from certbroker.api.problems import ERRORS
from certbroker.domain.when import parse_since
from certbroker.services.audit import PAGE_LIMIT, begin_request, end_request
from certbroker.wiring import Broker

router = APIRouter(responses=ERRORS)


class Acting:
    """ASGI middleware: one audit holder per request, with the caller's address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = begin_request(str(client[0]) if client else "unknown")
        try:
            await self.app(scope, receive, send)
        finally:
            end_request(token)


def parse_since_param(text: str | None, broker: Broker) -> datetime | None:
    """`since`: an ISO 8601 date or time, or an age (30m, 12h, 7d, 2w), read as
    `certbroker events --since` and `certbroker audit --since` read it."""
    if not text:
        return None
    return parse_since(text, broker.ctx.clock())


@router.get("/audit", tags=["audit"], response_model=dict[str, Any])
def audit_log(
    _p: Admin,
    broker: BrokerDep,
    since: Annotated[
        str | None,
        Query(max_length=40, description="ISO 8601 date/time (UTC), or an age: 30m, 12h, 7d."),
    ] = None,
    actor: Annotated[str | None, Query(max_length=200, description="The actor's name.")] = None,
    action: Annotated[
        str | None,
        Query(max_length=100, description="An action or its start: `certificate.`, `user.add`."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Who did what, when and from where, newest first: changes, every export of a
    private key, refused attempts. Follow `next` as `cursor` for older records."""
    page = broker.audit.page(
        since=parse_since_param(since, broker),
        actor=actor,
        action=action,
        cursor=cursor,
        limit=limit,
    )
    return {"items": [e.to_json() for e in page.entries], "next": page.next}
