"""The HTTP-01 responder's fall-through: what it would answer 404 goes to an upstream.

With `http01_upstream = "http://host:port"` (innovaphone's fall-through: certbroker owns
port 80, the web server that had it moves behind), a request for an unknown token, for
any other path, or with any other method than GET and HEAD, is forwarded unchanged: the
request line, the headers except hop-by-hop ones (`Connection` and what it names,
`Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Upgrade`, `Expect`), X-Forwarded-For (the
client appended), X-Forwarded-Proto (`http`) and X-Forwarded-Host added, and the body
(Content-Length only, up to MAX_BODY; a chunked request body is refused with 411). The
answer is relayed as it comes: status, headers (but hop-by-hop ones), body, streamed; a
redirect is relayed, never followed. One connection to the upstream per request
(`Connection: close`), on the responder's event loop (asyncio streams, nothing blocks).

The upstream must accept a connection within CONNECT_TIMEOUT (else 502, as for a refused
one) and send each part of its answer within READ_TIMEOUT (else 504 before the answer's
head; after it, the client's connection is cut, as nothing else can tell it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
MAX_BODY = 1 << 20  # a forwarded request's body; larger ones get 413
MAX_HEAD = 65536  # the upstream's status line and headers
CHUNK = 65536

_HOP_BY_HOP = {
    *(b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate"),
    *(b"proxy-authorization", b"te", b"trailer", b"upgrade", b"expect"),
}
_FORWARDED = (b"x-forwarded-proto", b"x-forwarded-host")  # replaced by ours


class UpstreamFailed(Exception):
    """Nothing of the answer was relayed yet: the client gets `status` (502 or 504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Client(Protocol):
    """Where the answer goes: the responder's connection."""

    def write(self, data: bytes) -> None: ...

    async def drained(self) -> None: ...


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named = {value.strip().lower() for name, value in headers if name == b"connection"}
    return _HOP_BY_HOP | {n.strip() for v in named for n in v.split(b",")}


def _split(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    pairs = []
    for line in lines:
        name, _, value = line.partition(b":")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs


@dataclass
class Upstream:
    host: str
    port: int
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """`http://host:port` (checked by the settings already)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"{url!r} is not http://HOST:PORT")
        return cls(parts.hostname, parts.port)

    async def relay(
        self,
        request_line: bytes,
        header_lines: list[bytes],
        body: bytes,
        peer: str,
        head_only: bool,
        keep_alive: bool,
        client: Client,
    ) -> bool:
        """Forward one request and relay the answer to `client`; True when the client's
        connection may serve another request (the answer's end was known)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamFailed(502, f"cannot connect: {exc or 'timeout'}") from None
        try:
            writer.write(self._request(request_line, header_lines, body, peer))
            head, framing = await self._head(reader, head_only)
            keep = keep_alive and framing != "close"
            if not keep:
                head += b"Connection: close\r\n"
            client.write(head + b"\r\n")
            await self._body(reader, framing, client)
            return keep
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    def _request(request_line: bytes, header_lines: list[bytes], body: bytes, peer: str) -> bytes:
        headers = _split(header_lines)
        drop = _hop_by_hop(headers) | set(_FORWARDED)
        out = [request_line]
        forwarded_for = peer
        host = b""
        for line, (name, value) in zip(header_lines, headers, strict=True):
            if name == b"host":
                host = value
            if name == b"x-forwarded-for":
                forwarded_for = f"{value.decode('latin-1')}, {peer}"
            elif name not in drop:
                out.append(line)
        out.append(b"X-Forwarded-For: " + forwarded_for.encode("latin-1"))
        out.append(b"X-Forwarded-Proto: http")
        if host:
            out.append(b"X-Forwarded-Host: " + host)
        out.append(b"Connection: close")
        return b"\r\n".join(out) + b"\r\n\r\n" + body

    async def _read(self, read: Coroutine[Any, Any, bytes]) -> bytes:
        return await asyncio.wait_for(read, self.read_timeout)

    async def _head(self, reader: asyncio.StreamReader, head_only: bool) -> tuple[bytes, str]:
        """The answer's head to relay (without its ending blank line), and how its body
        ends: "none", "length:N", "chunked" or "close"."""
        while True:  # interim 1xx answers are not relayed: the request went whole
            try:
                raw = await self._read(reader.readuntil(b"\r\n\r\n"))
            except TimeoutError:
                raise UpstreamFailed(504, "no answer in time") from None
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
                raise UpstreamFailed(502, f"no valid answer: {exc}") from None
            if len(raw) > MAX_HEAD:
                raise UpstreamFailed(502, "answer head too large")
            lines = raw[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise UpstreamFailed(502, "not an HTTP/1 answer")
            status = int(parts[1])
            if status >= 200:
                break
        headers = _split(lines[1:])
        drop = _hop_by_hop(headers)
        head = b"HTTP/1.1 " + b" ".join(parts[1:]) + b"\r\n"
        framing = "close"
        for line, (name, value) in zip(lines[1:], headers, strict=True):
            if name in drop:
                continue
            head += line + b"\r\n"
            if name == b"transfer-encoding" and value.lower().endswith(b"chunked"):
                framing = "chunked"
            elif name == b"content-length" and framing == "close" and value.isdigit():
                framing = f"length:{int(value)}"
        if head_only or status in (204, 304):
            framing = "none"
        return head, framing

    async def _body(self, reader: asyncio.StreamReader, framing: str, client: Client) -> None:
        if framing == "none":
            return
        if framing.startswith("length:"):
            left = int(framing[7:])
            while left:
                data = await self._read(reader.read(min(left, CHUNK)))
                if not data:
                    raise ConnectionError("the upstream closed before the answer's end")
                left -= len(data)
                await self._pass(client, data)
        elif framing == "chunked":
            while True:
                line = await self._read(reader.readuntil(b"\r\n"))
                await self._pass(client, line)
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    break
                await self._pass(client, await self._read(reader.readexactly(size + 2)))
            while True:  # trailers, up to the blank line
                line = await self._read(reader.readuntil(b"\r\n"))
                await self._pass(client, line)
                if line == b"\r\n":
                    break
        else:
            while data := await self._read(reader.read(CHUNK)):
                await self._pass(client, data)

    @staticmethod
    async def _pass(client: Client, data: bytes) -> None:
        client.write(data)
        await client.drained()
