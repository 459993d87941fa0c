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
from email.utils import formatdate

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
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_BODIES = {
    400: b"bad request\n",
    404: b"not found\n",
    405: b"only GET and HEAD\n",
    408: b"request timeout\n",
    431: b"request too large\n",
    503: b"store unavailable\n",
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
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            if end > MAX_REQUEST:
                self._fail(431)
                break
            self._request(head)
            answered = True
        if answered:  # the clock starts again for the next request
            timeout = REQUEST_TIMEOUT if self.buffer else IDLE_TIMEOUT
            self.deadline = time.monotonic() + timeout

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._fail(400)
            return
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            self._fail(505)
            return
        keep_alive = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, field = line.partition(b":")
            if not sep:
                self._fail(400)
                return
            name = name.strip().lower()
            if name == b"connection":
                tokens = field.strip().lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif (name == b"content-length" and field.strip() not in (b"0", b"")) or (
                name == b"transfer-encoding"
            ):
                self._fail(400)  # a GET with a body: nothing here reads one
                return
        with_body = method == b"GET"
        if not with_body and method != b"HEAD":
            self._send(405, _BODIES[405], True, False, b"Allow: GET, HEAD\r\n")
            return
        path = self._path(target)
        token = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        if not token or "/" in token:
            log.debug("http-01 %s %s -> 404", method.decode("latin-1"), path)
            self._send(404, _BODIES[404], with_body, keep_alive)
            return
        lookup = self.server.lookup
        if self.server.inline:
            try:
                value = lookup(token)
            except Exception:  # the store may be briefly unavailable; the CA retries
                log.exception("challenge lookup failed for token %s", token)
                self._answer(token, None, True, with_body, keep_alive)
            else:
                self._answer(token, value, False, with_body, keep_alive)
            return
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()  # pipelined requests wait in the kernel meanwhile
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, lookup, token)
        future.add_done_callback(lambda f: self._looked_up(f, token, with_body, keep_alive))

    def _looked_up(
        self, future: asyncio.Future[str | None], token: str, with_body: bool, keep_alive: bool
    ) -> None:
        self.busy = False
        if self.closing:
            return
        error = future.exception()
        if error is not None:
            log.error("challenge lookup failed for token %s: %s", token, error)
        value = None if error is not None else future.result()
        self._answer(token, value, error is not None, with_body, keep_alive)
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
        self._process()

    def _answer(
        self, token: str, value: str | None, failed: bool, with_body: bool, keep_alive: bool
    ) -> None:
        if failed:
            status, body = 503, _BODIES[503]
        elif value is None:
            status, body = 404, _BODIES[404]
        else:
            status, body = 200, value.encode("ascii")
        log.debug("http-01 %s -> %d", token, status)
        self._send(status, body, with_body, keep_alive)

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

    def __init__(self, sock: socket.socket, lookup: Lookup, *, inline: bool = False) -> None:
        self.sock = sock
        self.lookup = lookup
        self.inline = inline
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


def bind_responder(address: str, port: int, lookup: Lookup, *, inline: bool = False) -> Responder:
    """Listen on address:port, with a message that says what to do when that fails.

    `inline`: the look-up is local and fast (SQLite), so it runs on the event loop.
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
    return Responder(sock, lookup, inline=inline)


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
