"""The trust list: `GET /trust/roots.pem` for devices (no authentication: it holds only
public certificates), and the roots an admin gives for CAs whose chains do not say
where their root is."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from certbroker.api.auth import Admin, BrokerDep, Reader
from certbroker.api.problems import ERRORS

router = APIRouter(tags=["trust list"], responses=ERRORS)
CACHE_SECONDS = 60.0  # the list is read from every certificate: not on every request
_cache: dict[int, tuple[float, str]] = {}
_lock = threading.Lock()


class RootsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pem: Annotated[str, Field(max_length=500_000)] = Field(
        description="Root certificates, PEM; empty: none."
    )


@router.get(
    "/trust/roots.pem",
    response_class=Response,
    responses={200: {"content": {"application/pem-certificate-chain": {}}}},
)
async def roots_pem(broker: BrokerDep) -> Response:
    """The roots and intermediates of the CAs the broker's certificates chain to, PEM,
    for devices' trust lists. No authentication."""
    key = id(broker)
    cached = _cache.get(key)
    if cached is None or time.monotonic() - cached[0] > CACHE_SECONDS:
        pem = await run_in_threadpool(broker.trust.roots_pem)
        with _lock:
            _cache[key] = cached = (time.monotonic(), pem)
    return Response(
        cached[1],
        media_type="application/pem-certificate-chain",
        headers={"Cache-Control": f"public, max-age={int(CACHE_SECONDS)}"},
    )


@router.get("/api/v1/trust/roots", response_model=list[dict[str, Any]])
def show_trust_list(_p: Reader, broker: BrokerDep) -> list[dict[str, Any]]:
    """What /trust/roots.pem serves: each certificate's subject, issuer, expiry, SHA-256."""
    return broker.trust.describe(broker.trust.certificates())


@router.put("/api/v1/trust/roots", response_model=list[dict[str, Any]])
def set_trust_roots(body: RootsBody, _p: Admin, broker: BrokerDep) -> list[dict[str, Any]]:
    """Replace the roots an admin gives (a private CA's); served from the next minute."""
    found = broker.trust.set_roots(body.pem)
    with _lock:
        _cache.clear()
    return found
