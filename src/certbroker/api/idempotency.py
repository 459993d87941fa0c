"""`Idempotency-Key` on the POSTs that order, renew or revoke: the same key with the same
request gets the first answer again, and the work is done once (the answer is kept in
the store for a day, so a retry through another node is answered the same)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from certbroker.api.auth import broker_of
from certbroker.domain.access import Principal
from certbroker.domain.errors import Conflict
from certbroker.services.idempotency import working_for

HEADER = "Idempotency-Key"


def idempotent(
    request: Request,
    principal: Principal,
    body: BaseModel | None,
    work: Callable[[], JSONResponse],
    replay: Callable[[str], JSONResponse] | None = None,
) -> Response:
    """`work` once per (caller, key); `replay` answers from what a first request recorded
    it did (`services.idempotency`) when that request's node died before its answer was
    kept."""
    key = request.headers.get(HEADER)
    if key is None:
        return work()
    access = broker_of(request).access
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    if body is not None:
        digest.update(body.model_dump_json().encode())
    request_hash = digest.hexdigest()
    kept = access.claim_idempotency_key(principal, key, request_hash)
    if kept is not None:
        if kept.request_hash != request_hash:
            raise Conflict(
                f"{HEADER} {key!r} was used for another request; use a new key for this one"
            )
        if kept.status_code is None and kept.work_done and replay is not None:
            response = replay(kept.work_done)
            access.keep_idempotent_answer(
                principal, key, response.status_code, bytes(response.body).decode(),
                response.headers.get("location"),
            )  # fmt: skip
            response.headers["Idempotent-Replayed"] = "true"
            return response
        if kept.status_code is None:
            raise Conflict(f"the request with {HEADER} {key!r} is still running; retry shortly")
        headers = {"Idempotent-Replayed": "true"}
        if kept.location:
            headers["Location"] = kept.location
        return Response(
            kept.body or "",
            status_code=kept.status_code,
            media_type="application/json",
            headers=headers,
        )
    try:
        with working_for(principal.key, key):
            response = work()
    except BaseException:
        # Nothing was done (or it failed): the same key may try again.
        access.release_idempotency_key(principal, key)
        raise
    access.keep_idempotent_answer(
        principal,
        key,
        response.status_code,
        bytes(response.body).decode(),
        response.headers.get("location"),
    )
    return response
