"""Every error as `application/problem+json` (RFC 9457): `type`, `title`, `status`,
`detail`, and for a validation error the field at fault. A caller's mistake is a 4xx."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.websockets import WebSocket

from certbroker.domain.errors import (
    AccessDenied,
    CertbrokerError,
    Conflict,
    NotAuthenticated,
    NotFoundError,
    PermanentError,
    StoreFull,
    StoreUnavailable,
    Throttled,
    TransientError,
    UsageError,
)
from certbroker.services.outage import store_outage

log = logging.getLogger("certbroker.api")
PROBLEM = "application/problem+json"
TYPE_BASE = "https://certbroker.dev/problems/"
STORE_RETRY_AFTER = 5  # seconds a client is asked to wait while the database is away

TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "The CA refused",
    503: "The CA is unavailable",
}


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An error, as RFC 9457 describes it."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[FieldProblem] | None = None
    ca_problem: dict[str, Any] | None = None


def problem(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    title: str | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": TYPE_BASE + (kind or str(status)),
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **{k: v for k, v in extra.items() if v is not None},
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def status_of(exc: CertbrokerError) -> tuple[int, str]:
    """The HTTP status of an error, and its problem type's last word."""
    if isinstance(exc, NotAuthenticated):
        return 401, "not-authenticated"
    if isinstance(exc, AccessDenied):
        return 403, "forbidden"
    if isinstance(exc, NotFoundError):
        return 404, "not-found"
    if isinstance(exc, Conflict):
        return 409, "conflict"
    if isinstance(exc, Throttled):
        return 429, "throttled"
    if isinstance(exc, UsageError):
        return 422, "invalid-request"
    if isinstance(exc, TransientError):
        return 503, "ca-unavailable"
    if isinstance(exc, StoreFull):
        return 503, "store-full"  # reads go on; writes once there is room
    if isinstance(exc, StoreUnavailable):
        return 503, "store-unavailable"
    if isinstance(exc, PermanentError):
        return 422, "ca-refused"  # the CA refused what the caller asked for
    return 500, "internal"


async def _close(websocket: WebSocket, exc: CertbrokerError) -> None:
    """A websocket whose handler failed: 1013 (try again later) while the database is
    away, 1011 (an error) otherwise; refused when it was not yet accepted."""
    if isinstance(exc, StoreUnavailable):
        store_outage.lost(exc)
    else:
        log.error("websocket %s: %s", websocket.url.path, exc)
    with contextlib.suppress(RuntimeError, OSError):  # it may be closed already
        await websocket.close(code=1013 if isinstance(exc, StoreUnavailable) else 1011)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[-1] if loc else "")


def install(app: FastAPI) -> None:
    @app.exception_handler(CertbrokerError)
    async def certbroker_error(request: Request, exc: CertbrokerError) -> JSONResponse | None:
        if isinstance(request, WebSocket):  # an agent's or device's connection: no page to
            await _close(request, exc)  # answer with; closed, and it connects again
            return None
        status, kind = status_of(exc)
        if status in (401, 403):  # a refused attempt: into the audit log
            await run_in_threadpool(
                request.app.state.broker.audit.refused,
                request.method,
                request.url.path,
                str(exc),
                status,
            )
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="certbroker"'
        if isinstance(exc, Throttled):
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, TransientError) and exc.retry_after:
            headers["Retry-After"] = str(int(exc.retry_after))
        title = None
        if isinstance(exc, StoreUnavailable):
            # Once a warning for the whole outage, not a line per request; a client (or a
            # load balancer) tries again, here or on another node.
            store_outage.lost(exc)
            headers["Retry-After"] = str(STORE_RETRY_AFTER)
            title = (
                "The store is full" if isinstance(exc, StoreFull) else "The database is unavailable"
            )
        elif status >= 500:
            log.error("request failed: %s", exc)
        ca_problem = getattr(exc, "problem", None)
        return problem(
            status,
            str(exc),
            kind=kind,
            headers=headers,
            title=title,
            ca_problem=ca_problem.to_json() if ca_problem else None,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem(422, detail, kind="invalid-request", field=first["field"], errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        return problem(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error: %s", type(exc).__name__)
        return problem(500, "an unexpected error; the broker's log has the details")


# What every route may answer besides its success, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM: {}}, "description": TITLES[status]}
    for status in (400, 401, 403, 404, 409, 422, 429)
}
