"""The web application `certbroker serve` runs on CERTBROKER_LISTEN: the REST API under
`/api/v1` (OpenAPI at `/api/v1/openapi.json`, interactive docs at `/api/docs`) and the
console at `/`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import anyio.to_thread
from fastapi import FastAPI

from certbroker import __version__
from certbroker.api import (
    admin,
    agent,
    agent_poll,
    audit,
    authority,
    budgets,
    certificates,
    devices,
    health,
    notify,
    problems,
    targets,
    trust,
    webhooks,
)
from certbroker.api.limits import BodyLimit
from certbroker.wiring import Broker

API = "/api/v1"


# Requests run in at most this many threads at once. Python runs one at a time anyway,
# and SQLite's reader gives the interpreter up and takes it back for every row: with 16
# threads waiting for it, a page of 50 rows took 20x longer (bench/api.py, wrk -c16).
REQUEST_THREADS = 4


@contextlib.asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
    yield


def create_app(broker: Broker, workers_problems: Callable[[], list[str]] | None = None) -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="certbroker",
        version=__version__,
        summary="An ACME certificate broker: accounts, certificates, renewal, access control.",
        openapi_url=f"{API}/openapi.json",
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.broker = broker
    app.state.workers_problems = workers_problems  # for /readyz: what `serve` says of them
    app.add_middleware(BodyLimit)
    app.add_middleware(audit.Acting)  # who acts in each request, for the audit log
    problems.install(app)
    app.include_router(certificates.router, prefix=API)
    app.include_router(admin.router, prefix=API)
    app.include_router(devices.router, prefix=API)
    app.include_router(agent.router, prefix=API)
    app.include_router(agent_poll.router, prefix=API)
    app.include_router(targets.router, prefix=API)
    app.include_router(webhooks.router, prefix=API)
    app.include_router(audit.router, prefix=API)
    app.include_router(notify.router, prefix=API)
    app.include_router(budgets.router, prefix=API)
    app.include_router(trust.router)
    app.include_router(health.router)
    _bearer_in_openapi(app)

    # Swagger UI from the fastapi-swagger package: served here, no CDN.
    from fastapi_swagger import patch_fastapi

    patch_fastapi(
        app,
        docs_url="/api/docs",
        redirect_from_root_to_docs=False,
        title="certbroker API",
        swagger_js_url="/api/docs/swagger-ui-bundle.js",
        swagger_css_url="/api/docs/swagger-ui.css",
        swagger_favicon_url="/api/docs/favicon-32x32.png",
    )
    from certbroker.web import install as install_console

    install_console(app)
    authority.check(app)  # every route has its rule of who may call it
    return app


def _bearer_in_openapi(app: FastAPI) -> None:
    """Declare `Authorization: Bearer` for every operation, so tools (and the docs page)
    send the token."""
    build = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        assert isinstance(components, dict)
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `certbroker token create`.",
        }
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
