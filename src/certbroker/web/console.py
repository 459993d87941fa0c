"""The web console: server-rendered pages on the same services as the CLI and the API.

`install(app)` adds its routes (`/`, `/login`, `/certificates`, …) and `/static` to the
API's application. Every page needs a console session; every form carries the session's
CSRF token; what a role may not do is neither shown nor accepted."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from certbroker.api.auth import SESSION_COOKIE, address_of, broker_of
from certbroker.domain.access import Action
from certbroker.domain.errors import NotAuthenticated, Throttled
from certbroker.web import admin, audit, certificates, clients, mail, webhooks
from certbroker.web.common import (
    LOGIN_COOKIE,
    STATIC,
    ConsoleRoute,
    Form,
    acting,
    new_login_token,
    redirect,
    render,
    safe_next,
    text,
    who,
)
from certbroker.web.timeline import layout

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve the console (and its static files) from `app`."""
    app.include_router(router)
    app.include_router(certificates.router)
    app.include_router(admin.router)
    app.include_router(clients.router)
    app.include_router(webhooks.router)
    app.include_router(audit.router)
    app.include_router(mail.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


# -- log-in and log-out -----------------------------------------------------------------------


def _login_page(
    request: Request, next_url: str, name: str = "", error: str | None = None, status: int = 200
) -> Response:
    token = request.cookies.get(LOGIN_COOKIE) or new_login_token()
    response = render(
        request,
        None,
        "login.html",
        status_code=status,
        next_url=next_url,
        name=name,
        error=error,
        login_token=token,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    return _login_page(request, safe_next(next))


@router.post("/login")
def login(request: Request, form: Form) -> Response:
    next_url = safe_next(text(form, "next"))
    name = text(form, "name")
    password = str(form.get("password") or "")
    sent = str(form.get("login_token") or "")
    kept = request.cookies.get(LOGIN_COOKIE) or ""
    if not sent or not kept or not hmac.compare_digest(sent.encode(), kept.encode()):
        return _login_page(
            request, next_url, name, "The log-in form expired; please try again.", 403
        )
    try:
        session = broker_of(request).access.login(name, password, address_of(request))
    except Throttled as exc:
        return _login_page(request, next_url, name, f"Too many failed log-ins: {exc}", 429)
    except NotAuthenticated:
        return _login_page(request, next_url, name, "Wrong user name or password.", 401)
    response = redirect(request, next_url)
    response.set_cookie(
        SESSION_COOKIE,
        session.secret,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, form: Form) -> Response:
    acting(request, form)
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        broker_of(request).access.logout(secret)
    response = redirect(request, "/login", "You are logged out.")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- dashboard --------------------------------------------------------------------------------


@router.get("/")
def dashboard(request: Request) -> Response:
    person = who(request)
    person.require(Action.READ)
    data = person.broker.browsing.dashboard()
    return render(
        request,
        person,
        "dashboard.html",
        data=data,
        timeline=layout(data["timeline"], int(data["timeline_days"])),
        total=sum(data["counts"].values()),
    )
