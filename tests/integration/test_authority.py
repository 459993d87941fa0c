"""Who may do what, against a running `serve` (issue 24's guard rail): every route the app
has is called as every kind of caller, and each answer is checked against the table in
api/authority.py. A route the table does not know fails here (and stops the app: see
tests/unit/test_authority.py); a route that answers a caller the table refuses, or
refuses one it allows, fails here.

Callers: anonymous, a viewer, an operator and an admin (API tokens on the API, console
sessions on the console), a token limited to *.team.example.test, a disabled user's
session, a revoked token, a client's token and a disabled client's token.

An allowed caller sends an empty body: what is checked is that it got past the door
(no 401/403, no 500), not that the empty body did something. Then the name-limited token
is sent, with bodies that pass validation, at a certificate outside its names: nothing
of it may answer 2xx, and no page it may read names that certificate.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from certbroker.api.app import create_app
from certbroker.api.authority import RULES, Names, Rule, Who, route_keys
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, console_session, start_api, stop_serve

INSIDE = "a.team.example.test"  # the name-limited token's
OUTSIDE = "b.other.example.test"  # not its
PASSWORD = "correct horse battery"
RANK = {Who.VIEWER: 0, Who.OPERATOR: 1, Who.ADMIN: 2}

# One worker, in this order: the last test's allowed callers change what they call.
pytestmark = pytest.mark.xdist_group("who-may")


@dataclass
class Caller:
    name: str
    token: str | None = None  # on the API
    session: httpx.Client | None = None  # on the console (and, for a disabled user, the API)
    csrf: str = ""
    role: Who | None = None  # a user's or token's role, while its credentials are good
    client: bool = False  # a client's token that works
    limited: bool = False  # a token with a name limit

    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass
class Site:
    cli: Cli
    base: str
    callers: list[Caller]
    ids: dict[str, str]  # a path parameter -> the value the matrix uses
    outside: dict[str, str]  # ... and for the name-limited probe
    http: httpx.Client = field(default_factory=httpx.Client)  # cookieless, for tokens


def _csrf(session: httpx.Client) -> str:
    page = session.get("/")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


# Per module, as every serve of the suite: a serve left running holds its worker's
# HTTP-01 port, which the next module's requests need (a session-wide one failed them).
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("who-may")
    cli = make_cli(root / "data", pebble)
    cli.register()
    inside = cli.json("cert", "request", INSIDE, "--wait")["id"]
    outside = cli.json("cert", "request", OUTSIDE, "--wait")["id"]
    cli.register("spare")  # the account the routes on one account act on
    for target, cert in (("team", inside), ("prod", outside)):
        (root / target).mkdir()
        cli("target", "add", target, "--local", str(root / target))
        cli("target", "attach", target, str(cert))

    def token(name: str, role: str, *extra: str) -> str:
        return str(
            cli("token", "create", "--name", name, "--role", role, *extra).stdout.split()[-1]
        )

    def client(name: str) -> str:
        return str(cli("client", "add", name, "--allow", "*.gw.example.test").stdout.split()[-1])

    for name, role in (("v", "viewer"), ("o", "operator"), ("a", "admin"), ("gone", "viewer"),
                       ("victim", "viewer")):  # fmt: skip
        cli("user", "add", name, "--role", role, "--password-stdin", input=PASSWORD + "\n")
    limited = token("limited", "operator", "--names", "*.team.example.test")
    callers = [
        Caller("anonymous"),
        Caller("revoked token", token=token("revoked", "admin")),
        Caller("disabled client", token=client("gw-disabled")),
        Caller("client", token=client("gw"), client=True),
        Caller("viewer", token=token("viewer", "viewer"), role=Who.VIEWER),
        Caller("name-limited operator", token=limited, role=Who.OPERATOR, limited=True),
        Caller("operator", token=token("operator", "operator"), role=Who.OPERATOR),
        Caller("admin", token=token("admin", "admin"), role=Who.ADMIN),
        Caller("disabled user"),
    ]
    token("spare", "viewer")
    client("gw-spare")
    tsig = {"CERTBROKER_DNS_TSIG_SECRET": "MDEyMzQ1Njc4OWFiY2RlZmdoaWo="}
    cli("dns", "add", "spare", "--provider", "rfc2136", "--server", "127.0.0.1:9",
        "--tsig-key-name", "k", env=tsig)  # fmt: skip
    webhook = cli.json("webhook", "add", "http://127.0.0.1:9/hook", "--events", "issued",
                       "--allow-private")  # fmt: skip
    tokens = {t["name"]: t["id"] for t in cli.json("token", "list")}
    cli("token", "revoke", str(tokens["revoked"]))
    cli("client", "disable", "gw-disabled")

    serve = start_api(cli, CERTBROKER_WORKER_PROCESSES="1")
    base = api_url(cli)
    admin = {"Authorization": f"Bearer {callers[7].token}"}
    orders = {
        cert: httpx.get(f"{base}/api/v1/certificates/{cert}/orders", headers=admin,
                        trust_env=False).json()[0]["id"]
        for cert in (inside, outside)
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        for caller, user in zip(callers[4:8], ("v", "o", "o", "a"), strict=True):
            if caller.name != "name-limited operator":  # console users have no name limit
                caller.session = stack.enter_context(console_session(base, user, PASSWORD))
                caller.csrf = _csrf(caller.session)
        gone = callers[-1]
        gone.session = stack.enter_context(console_session(base, "gone", PASSWORD))
        gone.csrf = _csrf(gone.session)
        cli("user", "disable", "gone")
        try:
            yield Site(
                cli,
                base,
                callers,
                ids={
                    "cert_id": str(inside),
                    "order_id": str(orders[inside]),
                    "provider": "rfc2136",
                    "token_id": str(tokens["spare"]),
                    "webhook_id": str(webhook["id"]),
                    "delivery_id": "999999",
                    "request_id": "999999",
                },
                outside={"cert_id": str(outside), "order_id": str(orders[outside])},
                http=stack.enter_context(httpx.Client(base_url=base, trust_env=False, timeout=60)),
            )
        finally:
            stop_serve(serve)


def _path(template: str, ids: dict[str, str]) -> str:
    """The route's path with the objects the matrix uses (a {name} by what it names)."""
    names = {"/accounts/": "spare", "/dns-accounts/": "spare", "/users/": "victim",
             "/clients/": "gw-spare", "/targets/": "team"}  # fmt: skip
    for part, value in names.items():
        if part in template:
            template = template.replace("{name}", value)
    actions = {"/accounts/": "refresh", "/users/": "disable", "/clients/": "disable",
               "/webhooks/": "disable"}  # fmt: skip
    for part, value in actions.items():
        if part in template:
            template = template.replace("{action}", value)
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)


def _expected(rule: Rule, caller: Caller, console: bool) -> str:
    """'allowed', or the refusal: '401', '403', or 'login' (the console's redirect)."""
    if rule.who is Who.ANYONE:
        return "allowed"
    if console:  # sessions only
        if caller.session is None or caller.role is None:
            return "login"
        return "allowed" if RANK[caller.role] >= RANK[rule.who] else "403"
    if rule.who is Who.CLIENT:
        return "allowed" if caller.client else "401"
    if caller.role is None:
        return "401"
    if caller.limited and rule.names is Names.REFUSED:
        return "403"
    return "allowed" if RANK[caller.role] >= RANK[rule.who] else "403"


def _call(site: Site, caller: Caller, method: str, path: str, console: bool) -> httpx.Response:
    if console:
        http = caller.session or site.http
        data = {"csrf_token": caller.csrf} if method == "POST" else None
        # (a token sent to the console is not a session: the console ignores it)
        headers = caller.api_headers() if caller.session is None else {}
        try:
            return http.request(method, path, data=data, headers=headers)
        finally:
            site.http.cookies.clear()
    headers = caller.api_headers()
    if caller.session is not None and caller.token is None:  # the disabled user's session
        headers["X-CSRF-Token"] = caller.csrf
        return caller.session.request(method, path, headers=headers,
                                      json={} if method != "GET" else None)  # fmt: skip
    http = site.http
    if path.endswith("/progress/stream"):  # a stream: its status is what is checked
        with http.stream(method, path, headers=headers) as streamed:
            return httpx.Response(streamed.status_code)
    body = {"wait": 0} if path.endswith("/agent/poll") else {}  # not a long one
    try:
        return http.request(method, path, headers=headers,
                            json=body if method != "GET" else None)  # fmt: skip
    finally:
        http.cookies.clear()


def _http_routes() -> list[tuple[str, str]]:
    """Every HTTP route of the app: reads first, then changes, deletions and log-out last
    (an allowed caller's call does what it says)."""
    keys = [key for key, _ in route_keys(create_app(None))]  # type: ignore[arg-type]
    routes = [(key.split(" ", 1)[0], key.split(" ", 1)[1]) for key in keys if key[:3] != "WS "]

    def order(route: tuple[str, str]) -> tuple[int, str]:
        method, path = route
        late = method == "DELETE" or path.endswith(("/delete", "{action}"))
        return (0 if method == "GET" else 3 if path == "/logout" else 2 if late else 1, path)

    # The log-in form itself is the door, not behind it: who gets in is test_console's.
    return sorted((r for r in routes if r != ("POST", "/login")), key=order)


def _console(path: str) -> bool:
    return not path.startswith(("/api/", "/trust/", "/metrics", "/healthz", "/readyz"))


# For the name-limited probe: bodies that pass validation, so the answer is the route's.
BODIES: dict[str, Any] = {
    "POST /api/v1/certificates": {"names": [OUTSIDE.replace("b.", "c.")]},
    "POST /api/v1/certificates/{cert_id}/export": {"format": "pem"},
    "POST /api/v1/certificates/{cert_id}/revoke": {"reason": "superseded"},
    "POST /api/v1/certificates/{cert_id}/deploy": {},
    "POST /api/v1/certificates/{cert_id}/verify": {},
    "POST /api/v1/certificates/{cert_id}/alarm/acknowledge": {
        "until": (datetime.now(UTC) + timedelta(days=2)).isoformat(), "reason": "probe"},
    "PUT /api/v1/certificates/{cert_id}/recipients": {"to": ["probe@example.com"]},
    "POST /api/v1/targets/{name}/attach": "outside",
    "POST /api/v1/targets/{name}/detach": "outside",
}  # fmt: skip


def test_a_name_limited_token_reaches_nothing_outside_its_names(site: Site) -> None:
    limited = next(c for c in site.callers if c.name == "name-limited operator")
    headers = limited.api_headers()
    reached: list[str] = []
    with httpx.Client(base_url=site.base, trust_env=False, timeout=60) as http:
        for key, rule in RULES.items():
            method, template = key.split(" ", 1)
            if rule.names is Names.ANY or method == "WS":
                continue
            body = BODIES.get(key)
            if body == "outside":
                body = {"certificate_id": int(site.outside["cert_id"])}
            # the outside certificate, its order, its target
            path = _path(template.replace("{name}", "prod"), {**site.ids, **site.outside})
            if path.endswith("/progress/stream"):
                with http.stream(method, path, headers=headers) as streamed:
                    status, text = streamed.status_code, ""
            else:
                answer = http.request(method, path, headers=headers, json=body)
                status, text = answer.status_code, answer.text
            lists = "{" not in template and method == "GET"
            if rule.names is Names.REFUSED:
                if status != 403:
                    reached.append(f"{key}: {status}, the table refuses a name-limited token")
            elif lists:  # a list: its own only
                if status != 200 or OUTSIDE in text or '"prod"' in text:
                    reached.append(f"{key}: {status}, shows {OUTSIDE} or its target")
            elif status not in (403, 404):
                reached.append(
                    f"{key} on certificate {site.outside['cert_id']}: {status} {text[:200]}"
                )
    assert reached == [], "\n".join(reached)
    # ... and it still reaches its own (the probe above is not a blanket refusal).
    own = httpx.get(f"{site.base}/api/v1/certificates/{site.ids['cert_id']}",
                    headers=headers, trust_env=False)  # fmt: skip
    assert own.status_code == 200 and INSIDE in own.text


def test_no_page_the_name_limited_token_may_read_names_what_is_outside(site: Site) -> None:
    """Every GET of the API that answers the name-limited token, read for the outside
    certificate's name (a list, a dashboard, a count that names it)."""
    limited = next(c for c in site.callers if c.name == "name-limited operator")
    leaks: list[str] = []
    with httpx.Client(base_url=site.base, trust_env=False, timeout=60) as http:
        for method, template in _http_routes():
            rule = RULES[f"{method} {template}"]
            if method != "GET" or _console(template) or template.endswith("/stream"):
                continue
            if rule.who is Who.ANYONE:  # open to all, on purpose (/metrics: its own rule)
                continue
            answer = http.get(_path(template, site.ids), headers=limited.api_headers())
            if answer.status_code == 200 and OUTSIDE in answer.text:
                leaks.append(template)
    assert leaks == []


@pytest.mark.parametrize("socket", ["/api/v1/agent/ws", "/api/v1/csr/ws"])
def test_only_a_working_clients_token_opens_a_socket(site: Site, socket: str) -> None:
    url = site.base.replace("http://", "ws://") + socket
    assert RULES[f"WS {socket}"].who is Who.CLIENT
    for caller in site.callers:
        try:
            with connect(url, additional_headers=caller.api_headers(), open_timeout=10) as ws:
                if socket.endswith("agent/ws"):
                    ws.send(json.dumps({"type": "hello", "certificates": []}))
                    served = json.loads(ws.recv(timeout=30))["type"] == "welcome"
                else:
                    ws.send("not json")
                    served = json.loads(ws.recv(timeout=30))["error"]["status"] == 400
        except (InvalidStatus, ConnectionClosed):
            served = False
        assert served is caller.client, f"{socket} as {caller.name}: served={served}"


def test_every_route_answers_every_caller_as_the_table_says(site: Site) -> None:
    wrong: list[str] = []
    for method, template in _http_routes():
        if template == "/static":
            template = "/static/console.css"
        rule = RULES[f"{method} {template if template != '/static/console.css' else '/static'}"]
        console = _console(template)
        path = _path(template, site.ids)
        for caller in site.callers:
            want = _expected(rule, caller, console)
            got = _call(site, caller, method, path, console)
            status = got.status_code
            to_login = status == 303 and got.headers["location"].startswith("/login")
            if path == "/logout" and want == "allowed":  # its answer is the log-in page
                ok = to_login
            elif want == "allowed":
                ok = status not in (401, 403) and status != 500 and not to_login
            elif want == "login":
                ok = to_login
            else:
                ok = str(status) == want
            if not ok:
                wrong.append(f"{method} {path} as {caller.name}: {status}, the table says {want}")
    assert wrong == [], "\n".join(wrong)
