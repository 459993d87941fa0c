"""HTTP-01 at the edge: the agent answers `/.well-known/acme-challenge/<token>` on its
own port (80 by default) from the tokens the broker sends it for its own names, and
404 for anything else. A small asyncio server: the CA asks a handful of times per name."""

from __future__ import annotations

import asyncio
import contextlib

PREFIX = "/.well-known/acme-challenge/"
MAX_REQUEST = 8192


class EdgeResponder:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.tokens: dict[str, str] = {}  # token -> key authorization
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, path, *_ = head[:MAX_REQUEST].split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            token = path.removeprefix(PREFIX) if path.startswith(PREFIX) else None
            answer = self.tokens.get(token) if token and method in ("GET", "HEAD") else None
            if answer is None:
                body, status = b"not found\n", "404 Not Found"
            else:
                body, status = answer.encode(), "200 OK"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):  # fmt: skip
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
