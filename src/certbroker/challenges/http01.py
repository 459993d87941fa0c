"""The HTTP-01 responder: /.well-known/acme-challenge/{token} answered from the store.

Tokens live in the store, not in this process, so any process on the same store
(`serve`, or a CLI run) answers for every order. Anything else gets 404.

One asyncio event loop in a thread of its own serves every connection. A fast local
look-up (SQLite: one prepared SELECT by primary key, microseconds) runs on the loop
itself; any other (PostgreSQL over the network) runs in a thread pool, so a slow store
never holds other connections. Measured in bench/responder.py: the threaded
http.server with a SQLAlchemy look-up answered about 3.5 % of nginx's requests per
second; this answers about half.

Only what the CA needs is spoken: GET and HEAD, HTTP/1.0 and 1.1, keep-alive and
pipelining. A request must fit in 8 KiB and arrive within 10 s; an idle keep-alive
connection is closed after 30 s; at most 2,048 connections are open at once.

With an upstream (`http01_upstream`, challenges/upstream.py), what would get 404 or 405
(an unknown token, any other path, any other method, with its body) is forwarded there
and its answer relayed; a known token is always answered here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate

from certbroker.challenges.upstream import MAX_BODY, Upstream, UpstreamFailed
from certbroker.domain.errors import CertbrokerError

log = logging.getLogger("certbroker.challenges")

PREFIX = "/.well-known/acme-challenge/"
MAX_REQUEST = 8192  # request line and headers
REQUEST_TIMEOUT = 10.0  # from the first byte (or the last answer) to a whole request
IDLE_TIMEOUT = 30.0  # a keep-alive connection with nothing asked
MAX_CONNECTIONS = 2048
BACKLOG = 1024  # a CA validates every name of an order at once, from several places

Lookup = Callable[[str], str | None]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_BODIES = {
    400: b"bad request\n",
    404: b"not found\n",
    405: b"only GET and HEAD\n",
    408: b"request timeout\n",
    411: b"a chunked request body is not forwarded; send Content-Length\n",
    413: b"request body too large\n",
    431: b"request too large\n",
    502: b"upstream unreachable\n",
    503: b"store unavailable\n",
    504: b"upstream timed out\n",
    505: b"HTTP/1.0 or HTTP/1.1 only\n",
}


class _Clock:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


@dataclass
class _Request:
    line: bytes  # the request line, as it came
    method: bytes
    target: bytes
    headers: list[bytes]  # the header lines, as they came
    keep_alive: bool
    length: int  # Content-Length
    chunked: bool  # Transfer-Encoding
    expect_continue: bool


def _parse(head: bytes) -> _Request | int:
    """The request, or the status that refuses it."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return 400
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return 505
    request = _Request(lines[0], method, target, lines[1:], version == b"HTTP/1.1", 0, False, False)
    lengths = 0
    for line in request.headers:
        name, sep, field = line.partition(b":")
        if not sep:
            return 400
        name, field = name.strip().lower(), field.strip().lower()
        if name == b"connection":
            if b"close" in field:
                request.keep_alive = False
            elif b"keep-alive" in field:
                request.keep_alive = True
        elif name == b"content-length":
            if (not field.isdigit() and field != b"") or lengths:
                return 400  # two lengths: which one the upstream believes is not known
            lengths += 1
            request.length = int(field or b"0")
        elif name == b"transfer-encoding":
            request.chunked = True
        elif name == b"expect" and field == b"100-continue":
            request.expect_continue = True
    return request


class _Connection(asyncio.Protocol):
    def __init__(self, server: Responder) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False  # an answer is being looked up in the thread pool
        self.paused = False  # the client does not read its answers; neither do we
        self.closing = False
        self.deadline = 0.0  # time.monotonic() by which the next request must be whole
        self.peer: object = None
        self.continued = False  # "100 Continue" sent for the request being read
        self._writable: asyncio.Event | None = None  # set when the client reads again

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        if len(self.server.connections) >= MAX_CONNECTIONS:
            log.warning("http-01: %d connections open; refusing %s", MAX_CONNECTIONS, self.peer)
            transport.abort()
            return
        self.server.connections.add(self)
        self.deadline = time.monotonic() + IDLE_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        if self._writable is not None:
            self._writable.set()
        if exc is not None:
            log.debug("http-01 client %s hung up: %s", self.peer, exc)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.buffer:
            self.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.buffer += data
        self._process()

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self._writable is not None:
            self._writable.set()
        if self.transport is not None and not self.busy:
            self.transport.resume_reading()
        self._process()

    # -- requests ---------------------------------------------------------------------

    def _process(self) -> None:
        answered = False
        while not (self.busy or self.paused or self.closing):
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_REQUEST:
                    self._fail(431)
                break
            if end > MAX_REQUEST:
                self._fail(431)
                break
            request = _parse(self.buffer[:end])
            if isinstance(request, int):
                self._fail(request)
                break
            body_end = end + 4
            if request.length and self.server.upstream is not None:  # a body to forward
                if request.length > MAX_BODY:
                    self._fail(413)
                    break
                body_end += request.length
                if len(self.buffer) < body_end:
                    if request.expect_continue and not self.continued and self.transport:
                        self.continued = True
                        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    break
            body, self.buffer = self.buffer[end + 4 : body_end], self.buffer[body_end:]
            self.continued = False
            self._request(request, body)
            answered = True
        if answered:  # the clock starts again for the next request
            timeout = REQUEST_TIMEOUT if self.buffer else IDLE_TIMEOUT
            self.deadline = time.monotonic() + timeout

    def _request(self, request: _Request, body: bytes) -> None:
        method, upstream = request.method, self.server.upstream
        keep_alive = request.keep_alive
        if upstream is None and (request.length or request.chunked):
            self._fail(400)  # a body: without an upstream nothing here reads one
            return
        if upstream is not None and request.chunked:
            self._fail(411)
            return
        with_body = method == b"GET"
        if not with_body and method != b"HEAD":
            if upstream is not None:
                self._forward(request, body)
            else:
                self._send(405, _BODIES[405], True, False, b"Allow: GET, HEAD\r\n")
            return
        path = self._path(request.target)
        token = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        if not token or "/" in token:
            if upstream is not None:
                self._forward(request, body)
                return
            log.debug("http-01 %s %s -> 404", method.decode("latin-1"), path)
            self._send(404, _BODIES[404], with_body, keep_alive)
            return
        lookup = self.server.lookup
        if self.server.inline:
            try:
                value = lookup(token)
            except Exception:  # the store may be briefly unavailable; the CA retries
                log.exception("challenge lookup failed for token %s", token)
                self._answer(token, None, True, request, body)
            else:
                self._answer(token, value, False, request, body)
            return
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()  # pipelined requests wait in the kernel meanwhile
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, lookup, token)
        future.add_done_callback(lambda f: self._looked_up(f, token, request, body))

    def _looked_up(
        self, future: asyncio.Future[str | None], token: str, request: _Request, body: bytes
    ) -> None:
        self.busy = False
        if self.closing:
            return
        error = future.exception()
        if error is not None:
            log.error("challenge lookup failed for token %s: %s", token, error)
        value = None if error is not None else future.result()
        self._answer(token, value, error is not None, request, body)
        if self.busy:  # forwarded: reading resumes once the upstream's answer is relayed
            return
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
        self._process()

    def _answer(
        self, token: str, value: str | None, failed: bool, request: _Request, body: bytes
    ) -> None:
        if value is None and not failed and self.server.upstream is not None:
            self._forward(request, body)
            return
        if failed:
            status, answer = 503, _BODIES[503]
        elif value is None:
            status, answer = 404, _BODIES[404]
        else:
            status, answer = 200, value.encode("ascii")
        log.debug("http-01 %s -> %d", token, status)
        self._send(status, answer, request.method == b"GET", request.keep_alive)

    # -- the fall-through (challenges/upstream.py) ------------------------------------

    def _forward(self, request: _Request, body: bytes) -> None:
        upstream = self.server.upstream
        if upstream is None or self.transport is None or self.closing:
            return
        log.debug("http-01 %s: forwarding %s", self.peer, request.line.decode("latin-1"))
        self.busy = True
        self.transport.pause_reading()
        peer = self.peer[0] if isinstance(self.peer, tuple) else "unknown"
        relay = upstream.relay(
            request.line,
            request.headers,
            body,
            str(peer),
            request.method == b"HEAD",
            request.keep_alive,
            self,
        )
        task = asyncio.get_running_loop().create_task(relay)
        self.server.forwards.add(task)
        task.add_done_callback(lambda t: self._forwarded(t, request))

    def write(self, data: bytes) -> None:
        """Part of the upstream's answer, for the client."""
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    async def drained(self) -> None:
        """Return once the client reads what it was sent (or is gone)."""
        if self.paused and not self.closing:
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            await self._writable.wait()

    def _forwarded(self, task: asyncio.Task[bool], request: _Request) -> None:
        self.server.forwards.discard(task)
        self.busy = False
        if self.closing or self.transport is None:
            return
        error = None if task.cancelled() else task.exception()
        if isinstance(error, UpstreamFailed):
            log.debug("http-01 upstream: %s -> %d", error, error.status)
            self._send(error.status, _BODIES[error.status], request.method != b"HEAD", False)
            return
        if task.cancelled() or error is not None:
            log.debug("http-01 upstream failed during its answer: %r", error)
            self.closing = True
            self.transport.abort()  # the client cannot tell a cut answer otherwise
            return
        if not task.result():
            self.closing = True
            self.transport.close()
            return
        self.deadline = time.monotonic() + (REQUEST_TIMEOUT if self.buffer else IDLE_TIMEOUT)
        if not self.paused:
            self.transport.resume_reading()
        self._process()

    @staticmethod
    def _path(target: bytes) -> str:
        text = target.decode("latin-1").split("?", 1)[0]
        if not text.startswith("/"):  # absolute form (http://host/path), as proxies send
            scheme, sep, rest = text.partition("://")
            text = "/" + rest.partition("/")[2] if sep and scheme.lower() == "http" else ""
        return text

    def _fail(self, status: int) -> None:
        log.debug("http-01 client %s: %d", self.peer, status)
        self._send(status, _BODIES[status], True, False)

    def _send(
        self, status: int, body: bytes, with_body: bool, keep_alive: bool, extra: bytes = b""
    ) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        head = b"HTTP/1.1 %d %s\r\nServer: certbroker\r\nDate: %s\r\n" % (
            status,
            _REASONS[status].encode("ascii"),
            self.server.clock.date(),
        )
        head += b"Content-Type: text/plain\r\nContent-Length: %d\r\n%s" % (len(body), extra)
        if not keep_alive:
            head += b"Connection: close\r\n"
        transport.write(head + b"\r\n" + body if with_body else head + b"\r\n")
        if not keep_alive:
            self.closing = True
            transport.close()

    def check_deadline(self, now: float) -> None:
        """Called every second: end a connection that is idle or slow past its deadline."""
        if self.busy or self.closing or now < self.deadline:
            return
        if self.buffer:
            self._fail(408)
        elif self.transport is not None:
            self.closing = True
            self.transport.close()


class Responder:
    """Listens when made (so a taken port is reported at once); answers once started."""

    def __init__(
        self,
        sock: socket.socket,
        lookup: Lookup,
        *,
        inline: bool = False,
        upstream: Upstream | None = None,
    ) -> None:
        self.sock = sock
        self.lookup = lookup
        self.inline = inline
        self.upstream = upstream
        self.forwards: set[asyncio.Task[bool]] = set()
        self.clock = _Clock()
        self.connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> Responder:
        self._thread = threading.Thread(target=self._run, daemon=True, name="http01-responder")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise CertbrokerError(f"cannot answer HTTP-01: {self._error}")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(
                loop.create_server(lambda: _Connection(self), sock=self.sock, backlog=BACKLOG)
            )
        except Exception as exc:  # reported by start()
            self._error = exc
            loop.close()
            return
        finally:
            self._ready.set()
        loop.call_soon(self._sweep)
        try:
            loop.run_forever()
        finally:
            # Connections accepted but not yet made: asyncio makes them in tasks, which
            # fail (and leak the socket) once the server is closed; so first let them be.
            # Requests being forwarded end now.
            for task in list(self.forwards):
                task.cancel()
            for _ in range(10):
                pending = asyncio.all_tasks(loop)
                if not pending:
                    break
                loop.run_until_complete(asyncio.wait(pending, timeout=1))
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check_deadline(now)
        asyncio.get_running_loop().call_later(1.0, self._sweep)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._error is None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.sock.close()


def bind_responder(
    address: str,
    port: int,
    lookup: Lookup,
    *,
    inline: bool = False,
    upstream: Upstream | None = None,
) -> Responder:
    """Listen on address:port, with a message that says what to do when that fails.

    `inline`: the look-up is local and fast (SQLite), so it runs on the event loop.
    `upstream`: where what would get 404 or 405 goes instead (challenges/upstream.py).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except PermissionError:
        sock.close()
        raise CertbrokerError(
            f"cannot listen for HTTP-01 on port {port}: permission denied; run as root, grant "
            "CAP_NET_BIND_SERVICE, or set CERTBROKER_HTTP01_PORT to a port forwarded from 80"
        ) from None
    except OSError as exc:
        sock.close()
        raise CertbrokerError(
            f"cannot listen for HTTP-01 on {address}:{port}: {exc.strerror or exc}"
        ) from None
    return Responder(sock, lookup, inline=inline, upstream=upstream)


# Straight to this machine's port, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(port: int, token: str, value: str) -> bool:
    """True when what listens on 127.0.0.1:`port` answers `token` with `value`, as the CA
    would ask for it."""
    try:
        with _DIRECT.open(f"http://127.0.0.1:{port}{PREFIX}{token}", timeout=5) as response:
            return bool(response.read().decode("ascii", "replace") == value)
    except (urllib.error.URLError, OSError, ValueError):
        return False
