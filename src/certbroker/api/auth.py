"""Who is calling: an API token (`Authorization: Bearer …`) or a console session (its
cookie, and for a change the session's CSRF token in `X-CSRF-Token`)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from certbroker.domain.access import Action, Principal
from certbroker.domain.audit import ActorKind
from certbroker.domain.errors import AccessDenied, NotAuthenticated
from certbroker.services.audit import act_as
from certbroker.wiring import Broker

SESSION_COOKIE = "certbroker_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def broker_of(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def address_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def caller(request: Request) -> Principal:
    """The principal of this request; NotAuthenticated without valid credentials."""
    access = broker_of(request).access
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise NotAuthenticated("Authorization must be 'Bearer <token>'")
        principal = access.authenticate_token(secret.strip(), address_of(request))
        act_as(ActorKind.TOKEN, principal.name)  # the audit log's actor
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = access.session(cookie)
        act_as(ActorKind.USER, session.principal.name)
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                raise AccessDenied(
                    f"a change made with a console session needs its {CSRF_HEADER} header"
                )
        return session.principal
    raise NotAuthenticated(
        "no credentials: send 'Authorization: Bearer <token>' (`certbroker token create`) "
        "or log in to the console"
    )


def allowed(action: Action) -> Callable[[Request], Principal]:
    """A dependency: the caller, who must be allowed `action`."""

    def check(request: Request) -> Principal:
        principal = caller(request)
        broker_of(request).access.require(principal, action)
        return principal

    check.least_role = action.least_role  # type: ignore[attr-defined]  # api/authority.py
    return check


def unlimited(action: Action, why: str) -> Callable[[Request], Principal]:
    """`allowed(action)`, for a caller without a name limit: a name-limited token is
    refused at the door (403, saying `why`), before its request is read."""
    check = allowed(action)

    def door(request: Request) -> Principal:
        principal = check(request)
        if principal.names:
            raise AccessDenied(f"{why}; a name-limited token may not")
        return principal

    door.least_role = action.least_role  # type: ignore[attr-defined]  # api/authority.py
    door.names_refused = True  # type: ignore[attr-defined]
    return door


Reader = Annotated[Principal, Depends(allowed(Action.READ))]
Operator = Annotated[Principal, Depends(allowed(Action.REQUEST))]
Admin = Annotated[Principal, Depends(allowed(Action.MANAGE))]
Revoker = Annotated[Principal, Depends(allowed(Action.REVOKE))]
Deleter = Annotated[Principal, Depends(allowed(Action.DELETE))]
Caller = Annotated[Principal, Depends(caller)]


async def _broker(request: Request) -> Broker:
    """As a dependency: async, so it costs no hop through the thread pool (a plain
    function dependency does, on every request)."""
    return broker_of(request)


BrokerDep = Annotated[Broker, Depends(_broker)]
