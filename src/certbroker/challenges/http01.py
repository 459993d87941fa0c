"""The HTTP-01 responder: /.well-known/acme-challenge/{token} answered from the store.

Tokens live in the store, not in this process, so any process on the same store
(`serve`, or a CLI run) answers for every order. Anything else gets 404.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from certbroker.domain.errors import CertbrokerError

log = logging.getLogger("certbroker.challenges")

PREFIX = "/.well-known/acme-challenge/"

Lookup = Callable[[str], str | None]


class _Handler(BaseHTTPRequestHandler):
    server: Responder
    protocol_version = "HTTP/1.1"
    server_version = "certbroker"
    sys_version = ""
    # Buffer the response and send it in one write (handle_one_request flushes after each
    # request). Unbuffered, the headers and the body went out as two segments, and on a
    # keep-alive connection Nagle held the body until the client's delayed ACK of the
    # headers: about 40 ms a request (bench/responder.py: 22 requests/s on one connection).
    wbufsize = -1

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        body = b"not found\n"
        status = 404
        if path.startswith(PREFIX):
            token = path[len(PREFIX) :]
            if token and "/" not in token:
                try:
                    value = self.server.lookup(token)
                except Exception:  # the store may be briefly unavailable; the CA retries
                    log.exception("challenge lookup failed for token %s", token)
                    value = None
                    status = 503
                    body = b"store unavailable\n"
                if value is not None:
                    status, body = 200, value.encode("ascii")
        log.debug("http-01 %s %s -> %d", self.command, path, status)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # logged above at debug level, through logging


class Responder(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5. A CA validates every name of every order
    # at once, from several vantage points (Let's Encrypt: several per name); connections
    # beyond the backlog are dropped and the CA retries a second later, or gives up.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], lookup: Lookup) -> None:
        self.lookup = lookup
        super().__init__(address, _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> Responder:
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.2},
            daemon=True,
            name="http01-responder",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the client hung up (reset, EPIPE)
            log.debug("http-01 client %s hung up", client_address)
            return
        super().handle_error(request, client_address)


def bind_responder(address: str, port: int, lookup: Lookup) -> Responder:
    """Listen on address:port, with a message that says what to do when that fails."""
    try:
        return Responder((address, port), lookup)
    except PermissionError:
        raise CertbrokerError(
            f"cannot listen for HTTP-01 on port {port}: permission denied; run as root, grant "
            "CAP_NET_BIND_SERVICE, or set CERTBROKER_HTTP01_PORT to a port forwarded from 80"
        ) from None
    except OSError as exc:
        raise CertbrokerError(
            f"cannot listen for HTTP-01 on {address}:{port}: {exc.strerror or exc}"
        ) from None


def probe(port: int, put: Callable[[str, str], None], remove: Callable[[str], None]) -> bool:
    """True when whatever listens on `port` answers this store's tokens."""
    token = "certbroker-probe-" + secrets.token_urlsafe(16)
    value = f"{token}.{secrets.token_urlsafe(16)}"
    put(token, value)
    try:
        url = f"http://127.0.0.1:{port}{PREFIX}{token}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.read().decode("ascii", "replace") == value)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    finally:
        remove(token)
