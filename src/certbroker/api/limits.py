"""A cap on request bodies: the API reads a body before it knows who is calling, so
without one anybody could make it hold gigabytes. The largest body certbroker takes is
a PEM key or CA bundle, far below the cap."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 1 << 20  # 1 MiB


class TooLarge(HTTPException):
    """Raised while the body is read: the API's handlers answer it as a 413 problem."""

    def __init__(self, max_body: int) -> None:
        super().__init__(413, f"the request body is over {max_body // 1024} KiB")


def _problem(max_body: int) -> bytes:
    return json.dumps(
        {
            "type": "https://certbroker.dev/problems/too-large",
            "title": "Request too large",
            "status": 413,
            "detail": f"the request body is over {max_body // 1024} KiB",
        }
    ).encode()


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await self._refuse(send)
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise TooLarge(self.max_body)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = _problem(self.max_body)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
