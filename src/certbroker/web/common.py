"""What every console page shares: who is logged in, the CSRF check of a form, the
templates, flash messages, and the route class that turns errors into pages."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from certbroker import __version__
from certbroker.api.auth import SESSION_COOKIE, broker_of
from certbroker.api.problems import status_of
from certbroker.domain.access import Action, Principal
from certbroker.domain.audit import ActorKind
from certbroker.domain.clients import RequestState
from certbroker.domain.errors import (
    AccessDenied,
    CertbrokerError,
    NotAuthenticated,
    StoreFull,
    StoreUnavailable,
)
from certbroker.services.audit import act_as
from certbroker.services.outage import store_outage
from certbroker.wiring import Broker

log = logging.getLogger("certbroker.api")

HERE = Path(__file__).parent
STATIC = HERE / "static"
CSRF_FIELD = "csrf_token"
FLASH_COOKIE = "certbroker_flash"
LOGIN_COOKIE = "certbroker_login"  # the log-in form's own CSRF token (double submit)

# No inline script or style anywhere, so the policy can be strict.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No valid session: the browser goes to the log-in page, and comes back after."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


@dataclass(frozen=True)
class Who:
    """The person behind one request of the console."""

    principal: Principal
    csrf_token: str
    broker: Broker

    def may(self, action: Action | str) -> bool:
        return self.principal.may(Action(action))

    def require(self, action: Action) -> None:
        self.broker.access.require(self.principal, action)


def safe_next(url: str | None) -> str:
    """A place on this site to go after logging in; anything else goes to the dashboard."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    return url


def here(request: Request) -> str:
    path = request.url.path
    return f"{path}?{request.url.query}" if request.url.query else path


def who(request: Request) -> Who:
    """The logged-in user; LoginRequired without a valid session."""
    broker = broker_of(request)
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        raise LoginRequired(here(request) if request.method == "GET" else "/")
    try:
        session = broker.access.session(secret)
    except NotAuthenticated:
        raise LoginRequired(here(request) if request.method == "GET" else "/") from None
    act_as(ActorKind.USER, session.principal.name)  # the audit log's actor
    return Who(principal=session.principal, csrf_token=session.csrf_token, broker=broker)


async def read_form(request: Request) -> FormData:
    return await request.form(max_files=0, max_fields=300)


Form = Annotated[FormData, Depends(read_form)]


def acting(request: Request, form: FormData, action: Action | None = None) -> Who:
    """The user of a form's POST: logged in, the form's CSRF token the session's, and
    allowed `action`. AccessDenied (403) otherwise."""
    person = who(request)
    sent = str(form.get(CSRF_FIELD) or "")
    if not sent or not hmac.compare_digest(sent.encode(), person.csrf_token.encode()):
        raise AccessDenied("the form's CSRF token is missing or wrong; reload the page and retry")
    if action is not None:
        person.require(action)
    return person


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def texts(form: FormData, name: str) -> list[str]:
    return [v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()]


def lines(value: str) -> list[str]:
    """One entry per line (or separated by commas or spaces), blanks dropped."""
    return [part for part in value.replace(",", " ").split() if part]


# -- templates ------------------------------------------------------------------------------


def _when(value: str | datetime | None) -> str:
    if value is None or value == "":
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _day(value: str | datetime | None) -> str:
    if value is None or value == "":
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d")


def _days_left(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 0:
        return "expired"
    return "1 day" if value == 1 else f"{value} days"


def _urgency(value: int | None) -> str:
    if value is None:
        return ""
    if value < 7:
        return "urgent"
    if value < 30:
        return "soon"
    return "fine"


TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters.update(when=_when, day=_day, days_left=_days_left, urgency=_urgency)
TEMPLATES.globals.update(version=__version__, CSRF_FIELD=CSRF_FIELD, Action=Action)


def take_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(unquote(raw))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {"kind": str(data.get("kind", "ok")), "message": str(data.get("message", ""))}


def render(
    request: Request,
    person: Who | None,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    flash = take_flash(request)
    if person is not None and person.may(Action.MANAGE):  # the count by the nav's link
        waiting = person.broker.devices.requests_in(RequestState.AWAITING_APPROVAL)
        context.setdefault("waiting_approvals", len(waiting))
    page = TEMPLATES.get_template(template).render(
        request=request, who=person, path=request.url.path, flash=flash, **context
    )
    response = HTMLResponse(page, status_code=status_code)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def redirect(
    request: Request, url: str, message: str | None = None, kind: str = "ok"
) -> RedirectResponse:
    """303 to `url` (a GET), with a message shown once on the page it leads to."""
    response = RedirectResponse(url, status_code=303)
    if message:
        response.set_cookie(
            FLASH_COOKIE,
            quote(json.dumps({"kind": kind, "message": message[:1500]})),
            max_age=120,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response


def query(base: str, **params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{base}?{urlencode(kept)}" if kept else base


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


# -- errors as pages ------------------------------------------------------------------------


# The API's statuses (api/problems.py), with a title for people.
PAGE_TITLES = {
    401: "Log in again",
    403: "Not allowed",
    404: "Not found",
    409: "Not now",
    422: "That did not work",
    429: "Too many attempts",
    503: "The CA cannot be reached",
}


def error_page(
    request: Request, status: int, title: str, detail: str, *, anonymous: bool = False
) -> HTMLResponse:
    """The error as a page; with `anonymous`, without asking the store who is logged in
    (it cannot be reached)."""
    person: Who | None = None
    if not anonymous:
        with contextlib.suppress(LoginRequired):
            person = who(request)
    return render(request, person, "error.html", status_code=status, title=title, detail=detail)


class ConsoleRoute(APIRoute):
    """A console route: errors become pages (not problem+json), a missing session goes to
    the log-in page, and every answer carries the console's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired as exc:
                response = RedirectResponse(query("/login", next=exc.next_url), status_code=303)
            except RequestValidationError:
                response = await run_in_threadpool(
                    error_page, request, 404, "Not found", "There is no such page."
                )
            except CertbrokerError as exc:
                status, _ = status_of(exc)
                if status in (401, 403):  # a refused attempt: into the audit log
                    await run_in_threadpool(
                        broker_of(request).audit.refused,
                        request.method,
                        request.url.path,
                        str(exc),
                        status,
                    )
                title = PAGE_TITLES.get(status, "Something went wrong")
                away = isinstance(exc, StoreUnavailable)
                if isinstance(exc, StoreUnavailable):
                    title = (
                        "The store is full"
                        if isinstance(exc, StoreFull)
                        else "The database cannot be reached"
                    )
                    store_outage.lost(exc)  # one warning for the outage, not one a page
                elif status >= 500:
                    log.error("console: %s", exc)
                response = await run_in_threadpool(
                    error_page, request, status, title, str(exc), anonymous=away
                )
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return run


def field_errors(
    message: str, rules: Mapping[str, tuple[str, ...]], default: str = ""
) -> dict[str, str]:
    """The field a service's message is about (the first rule with a word found in it),
    mapped to the message; `default` ("" for the top of the form) otherwise."""
    lowered = message.lower()
    for field, words in rules.items():
        if any(word in lowered for word in words):
            return {field: message}
    return {default: message}
