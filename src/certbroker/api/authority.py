"""Who may do what: every route of the API and the console, every websocket and poll,
with the least caller it answers and whether a token's name limit narrows it.

This table is the one place that says it. `create_app` refuses to start with a route
that is not in it (or a rule for a route that no longer exists), and with an API route
whose role dependency asks for another role than its rule; a test calls every route as
each kind of caller and checks the answers against it (tests/integration/test_authority.py).
docs/api.md's "Who may do what" is this table in prose.

Callers, least first:
- ANYONE: no credentials (health, the log-in page, the trust roots, the docs).
- CLIENT: a client's token (`cbc_…`): gateway agents and devices, on their own routes only.
- VIEWER < OPERATOR < ADMIN: a user's console session or an API token of that role.
  A name-limited token (`--names`) is at most an operator. On a route marked Names.OWN
  it sees and acts on certificates (and their orders, events, alarms, targets) whose
  every name is within its limit, and nothing else exists for it (404); one marked
  Names.REFUSED refuses it (403). Console users have no name limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute


class Who(StrEnum):
    """The least caller a route answers."""

    ANYONE = "anyone"
    CLIENT = "client"
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Names(StrEnum):
    """What a token's name limit does on a route."""

    ANY = "any"  # nothing there is a certificate's: the token acts as its role
    OWN = "own"  # it sees and acts on its own names only; the rest does not exist (404)
    REFUSED = "refused"  # a name-limited token is refused (403)


@dataclass(frozen=True)
class Rule:
    who: Who
    names: Names = Names.ANY
    note: str = ""


ANYONE = Rule(Who.ANYONE)
CLIENT = Rule(Who.CLIENT)
VIEWER = Rule(Who.VIEWER)
OPERATOR = Rule(Who.OPERATOR)
ADMIN = Rule(Who.ADMIN)
VIEWER_NAMES = Rule(Who.VIEWER, Names.OWN)
OPERATOR_NAMES = Rule(Who.OPERATOR, Names.OWN)
# What goes to a push target: its files are shared by whatever is attached to it.
SHARED_TARGET = Rule(Who.OPERATOR, Names.REFUSED, note="a target's files are everyone's")

API = "/api/v1"

# "METHOD path" (WS for a websocket, as the route declares its path) -> its rule.
RULES: Mapping[str, Rule] = {
    # -- certificates and their orders --------------------------------------------------
    f"POST {API}/certificates": OPERATOR_NAMES,
    f"GET {API}/certificates": VIEWER_NAMES,
    f"GET {API}/certificates/{{cert_id}}": VIEWER_NAMES,
    f"GET {API}/certificates/{{cert_id}}/chain": VIEWER_NAMES,
    f"POST {API}/certificates/{{cert_id}}/export": Rule(
        Who.VIEWER, Names.OWN, note="a format holding the private key: operator"
    ),
    f"POST {API}/certificates/{{cert_id}}/renew": OPERATOR_NAMES,
    f"POST {API}/certificates/{{cert_id}}/revoke": OPERATOR_NAMES,
    f"DELETE {API}/certificates/{{cert_id}}": OPERATOR_NAMES,
    f"POST {API}/certificates/{{cert_id}}/disable": OPERATOR_NAMES,
    f"POST {API}/certificates/{{cert_id}}/enable": OPERATOR_NAMES,
    f"POST {API}/certificates/{{cert_id}}/verify": OPERATOR_NAMES,
    f"GET {API}/certificates/{{cert_id}}/orders": VIEWER_NAMES,
    f"GET {API}/orders/{{order_id}}": VIEWER_NAMES,
    f"GET {API}/certificates/{{cert_id}}/progress": VIEWER_NAMES,
    f"GET {API}/certificates/{{cert_id}}/progress/stream": VIEWER_NAMES,
    f"POST {API}/certificates/{{cert_id}}/alarm/acknowledge": OPERATOR_NAMES,
    f"PUT {API}/certificates/{{cert_id}}/recipients": OPERATOR_NAMES,
    f"GET {API}/events": VIEWER_NAMES,
    f"GET {API}/alarms": VIEWER_NAMES,
    f"GET {API}/dashboard": Rule(
        Who.VIEWER, Names.REFUSED, note="its totals count every certificate"
    ),
    # -- push targets -------------------------------------------------------------------
    f"GET {API}/targets": Rule(
        Who.OPERATOR, Names.OWN, note="hosts and commands: configuration, so operators"
    ),
    f"POST {API}/targets": ADMIN,
    f"GET {API}/targets/{{name}}": OPERATOR_NAMES,
    f"DELETE {API}/targets/{{name}}": ADMIN,
    f"POST {API}/targets/{{name}}/attach": SHARED_TARGET,
    f"POST {API}/targets/{{name}}/detach": SHARED_TARGET,
    f"POST {API}/certificates/{{cert_id}}/deploy": OPERATOR_NAMES,
    f"GET {API}/certificates/{{cert_id}}/targets": VIEWER_NAMES,
    # -- ACME and DNS accounts, users, tokens, settings --------------------------------
    f"GET {API}/accounts": VIEWER,
    f"POST {API}/accounts": ADMIN,
    f"POST {API}/accounts/import": ADMIN,
    f"GET {API}/accounts/{{name}}": VIEWER,
    f"PUT {API}/accounts/{{name}}/emails": ADMIN,
    f"POST {API}/accounts/{{name}}/rollover": ADMIN,
    f"POST {API}/accounts/{{name}}/refresh": ADMIN,
    f"POST {API}/accounts/{{name}}/deactivate": ADMIN,
    f"DELETE {API}/accounts/{{name}}": ADMIN,
    f"GET {API}/dns-providers": VIEWER,
    f"GET {API}/dns-providers/{{provider}}": VIEWER,
    f"GET {API}/dns-accounts": VIEWER,
    f"POST {API}/dns-accounts": ADMIN,
    f"GET {API}/dns-accounts/{{name}}": VIEWER,
    f"POST {API}/dns-accounts/{{name}}/test": ADMIN,
    f"DELETE {API}/dns-accounts/{{name}}": ADMIN,
    f"GET {API}/users": ADMIN,
    f"POST {API}/users": ADMIN,
    f"PATCH {API}/users/{{name}}": ADMIN,
    f"DELETE {API}/users/{{name}}": ADMIN,
    f"GET {API}/tokens": ADMIN,
    f"POST {API}/tokens": Rule(Who.ADMIN, note="a token no broader than its maker"),
    f"DELETE {API}/tokens/{{token_id}}": ADMIN,
    f"GET {API}/settings": VIEWER,
    f"PUT {API}/settings": ADMIN,
    f"GET {API}/settings/mail": ADMIN,
    f"PATCH {API}/settings/mail": ADMIN,
    f"POST {API}/notify/test": ADMIN,
    f"GET {API}/mail-deliveries": ADMIN,
    f"GET {API}/budgets": ADMIN,
    f"PUT {API}/budgets": ADMIN,
    f"GET {API}/trust/roots": VIEWER,
    f"PUT {API}/trust/roots": ADMIN,
    f"GET {API}/audit": ADMIN,
    # -- webhooks -------------------------------------------------------------------------
    f"GET {API}/webhooks": ADMIN,
    f"POST {API}/webhooks": ADMIN,
    f"GET {API}/webhooks/{{webhook_id}}": ADMIN,
    f"DELETE {API}/webhooks/{{webhook_id}}": ADMIN,
    f"POST {API}/webhooks/{{webhook_id}}/test": ADMIN,
    f"GET {API}/webhooks/{{webhook_id}}/deliveries": ADMIN,
    f"POST {API}/webhook-deliveries/{{delivery_id}}/retry": ADMIN,
    # -- clients: managed by admins; their own routes take the client's token -------------
    f"GET {API}/clients": ADMIN,
    f"POST {API}/clients": ADMIN,
    f"GET {API}/clients/{{name}}": ADMIN,
    f"PATCH {API}/clients/{{name}}": ADMIN,
    f"POST {API}/clients/{{name}}/rotate-token": ADMIN,
    f"DELETE {API}/clients/{{name}}": ADMIN,
    f"GET {API}/approvals": ADMIN,
    f"POST {API}/approvals/{{request_id}}/approve": ADMIN,
    f"POST {API}/approvals/{{request_id}}/deny": ADMIN,
    f"POST {API}/csr": CLIENT,
    f"GET {API}/csr": CLIENT,
    f"GET {API}/csr/{{request_id}}": CLIENT,
    f"GET {API}/client/certificates": CLIENT,
    f"GET {API}/client/certificates/{{cert_id}}": CLIENT,
    f"WS {API}/csr/ws": Rule(Who.CLIENT, note="the client is looked at again every 2 s"),
    f"WS {API}/agent/ws": Rule(Who.CLIENT, note="closed when the client changes"),
    f"POST {API}/agent/poll": Rule(Who.CLIENT, note="ends when the client changes"),
    # -- open to anyone -------------------------------------------------------------------
    f"GET {API}/openapi.json": ANYONE,
    "GET /api/docs": ANYONE,
    "GET /api/docs/swagger-ui-bundle.js": ANYONE,
    "GET /api/docs/swagger-ui.css": ANYONE,
    "GET /api/docs/favicon-32x32.png": ANYONE,
    "GET /trust/roots.pem": ANYONE,
    "GET /metrics": Rule(Who.ANYONE, note="metrics_token, when set, is asked for"),
    "GET /healthz": ANYONE,
    "GET /readyz": ANYONE,
    "GET /static": ANYONE,
    # -- the console: a user's session (and its CSRF token for a change) ----------------
    "GET /login": ANYONE,
    "POST /login": ANYONE,
    "POST /logout": VIEWER,
    "GET /": VIEWER,
    "GET /certificates": VIEWER,
    "GET /certificates/new": OPERATOR,
    "POST /certificates/new": OPERATOR,
    "GET /certificates/{cert_id}": VIEWER,
    "POST /certificates/{cert_id}/deploy": OPERATOR,
    "POST /certificates/{cert_id}/renew": OPERATOR,
    "POST /certificates/{cert_id}/revoke": OPERATOR,
    "POST /certificates/{cert_id}/delete": OPERATOR,
    "POST /certificates/{cert_id}/disable": OPERATOR,
    "POST /certificates/{cert_id}/enable": OPERATOR,
    "POST /certificates/{cert_id}/download": Rule(
        Who.VIEWER, note="a format holding the private key: operator"
    ),
    "POST /certificates/{cert_id}/verify": OPERATOR,
    "POST /certificates/{cert_id}/recipients": OPERATOR,
    "POST /alarms/{cert_id}/acknowledge": OPERATOR,
    "GET /events": VIEWER,
    "GET /alarms": VIEWER,
    "GET /accounts": VIEWER,
    "POST /accounts": ADMIN,
    "POST /accounts/import": ADMIN,
    "POST /accounts/{name}/{action}": ADMIN,
    "GET /dns-accounts": VIEWER,
    "POST /dns-accounts": ADMIN,
    "POST /dns-accounts/{name}/test": ADMIN,
    "POST /dns-accounts/{name}/delete": ADMIN,
    "GET /settings": VIEWER,
    "POST /settings": ADMIN,
    "GET /users": ADMIN,
    "POST /users": ADMIN,
    "POST /users/{name}/{action}": ADMIN,
    "GET /tokens": ADMIN,
    "POST /tokens": ADMIN,
    "POST /tokens/{token_id}/revoke": ADMIN,
    "GET /clients": ADMIN,
    "POST /clients": ADMIN,
    "POST /clients/{name}/allow": ADMIN,
    "POST /clients/{name}/rotate": ADMIN,
    "POST /clients/{name}/{action}": ADMIN,
    "GET /approvals": ADMIN,
    "POST /approvals/{request_id}/approve": ADMIN,
    "POST /approvals/{request_id}/deny": ADMIN,
    "GET /webhooks": ADMIN,
    "POST /webhooks": ADMIN,
    "POST /webhooks/{webhook_id}/test": ADMIN,
    "POST /webhooks/{webhook_id}/{action}": ADMIN,
    "POST /webhook-deliveries/{delivery_id}/retry": ADMIN,
    "GET /audit": ADMIN,
    "GET /mail": ADMIN,
    "POST /mail": ADMIN,
    "POST /mail/test": ADMIN,
}

# The least role the API's dependencies (api/auth.py `allowed`) may ask for each caller.
_ROLE_OF = {Who.VIEWER: "viewer", Who.OPERATOR: "operator", Who.ADMIN: "admin"}


def route_keys(app: FastAPI) -> Iterator[tuple[str, BaseRoute]]:
    """Every route the app answers, as "METHOD path" (HEAD left out: it follows GET)."""
    for route in _routes(app.routes, ""):
        path = route[0]
        found = route[1]
        if isinstance(found, (APIWebSocketRoute, WebSocketRoute)):
            yield f"WS {path}", found
        elif isinstance(found, Mount):
            yield f"GET {path}", found
        elif isinstance(found, Route):
            for method in sorted(found.methods or ()):
                if method != "HEAD":
                    yield f"{method} {path}", found


def _routes(routes: list[BaseRoute], prefix: str) -> Iterator[tuple[str, BaseRoute]]:
    for route in routes:
        included: Any = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            context: Any = getattr(route, "include_context", None)
            yield from _routes(included.routes, prefix + (context.prefix if context else ""))
        else:
            yield prefix + str(getattr(route, "path", "")), route


def problems(app: FastAPI) -> list[str]:
    """What is wrong between the app's routes and RULES; empty when they agree."""
    found: list[str] = []
    keys: set[str] = set()
    for key, route in route_keys(app):
        keys.add(key)
        rule = RULES.get(key)
        if rule is None:
            found.append(f"{key}: no rule says who may call it")
            continue
        asked = _asked_role(route)
        if asked is not None and asked != _ROLE_OF.get(rule.who, rule.who.value):
            found.append(f"{key}: its dependency asks for {asked}, the rule says {rule.who}")
        if isinstance(route, APIRoute) and key.split(" ", 1)[1].startswith(API):
            refused = any(
                getattr(d.call, "names_refused", False) for d in route.dependant.dependencies
            )
            if refused != (rule.names is Names.REFUSED):
                found.append(
                    f"{key}: the rule says a name-limited token is "
                    f"{'refused' if rule.names is Names.REFUSED else 'let in'}, its "
                    f"dependency {'refuses' if refused else 'lets'} it"
                )
    found += [f"{key}: a rule for a route that does not exist" for key in RULES if key not in keys]
    return found


def _asked_role(route: BaseRoute) -> str | None:
    """The role an API route's dependency demands (None: it decides in its body)."""
    if not isinstance(route, APIRoute):
        return None
    for dependency in route.dependant.dependencies:
        role = getattr(dependency.call, "least_role", None)
        if role is not None:
            return str(role)
        if getattr(dependency.call, "__name__", "") == "client_caller":
            return Who.CLIENT.value
    return None


def check(app: FastAPI) -> None:
    """Refuse an app with a route no rule covers, or a rule its route does not keep."""
    found = problems(app)
    if found:
        raise RuntimeError("api/authority.py and the routes disagree:\n  " + "\n  ".join(found))
