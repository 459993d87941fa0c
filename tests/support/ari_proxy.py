"""A small HTTPS proxy in front of Pebble that adds what Debian's Pebble 2.4 lacks: ARI.

Every request is passed to Pebble (with this proxy's host in `Host`, so the URLs Pebble
writes and the JWS `url` it checks are the proxy's), and every Pebble URL in a response
is rewritten to the proxy. On top:

* the directory gains `renewalInfo` (RFC 9773) and `meta.profiles`;
* GET <renewalInfo>/<certID> answers the window the test sets (`windows[certID]`, else
  `window`), with
  `Retry-After: retry_after`, and records which certIDs were asked (`asked`);
* each newOrder payload is decoded and recorded (`new_orders`), so a test can see
  `replaces` on the wire;
* `down = True` makes the CA unreachable (connections closed unanswered), as in an
  outage, until it is set back;
* `distort(method, path, body)`, when set, may give another body for Pebble's successful
  answer (a CA's surprise: a list where an object belongs, a field missing, a page that is
  no JSON); None keeps Pebble's. Problem documents (Pebble's 5 % of badNonce among them)
  pass as they are.

It uses Pebble's own listener certificate (for 127.0.0.1), so clients trust it with the
same CA bundle.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from tests.support.pebble import PebbleServer

_PASSED_HEADERS = ("content-type", "replay-nonce", "location", "link", "retry-after")


class AriProxy:
    def __init__(self, pebble: PebbleServer, window: tuple[datetime, datetime]) -> None:
        self.pebble = pebble
        self.window = window
        self.windows: dict[str, tuple[datetime, datetime]] = {}
        self.retry_after = 3600
        self.asked: list[str] = []
        self.new_orders: list[dict[str, Any]] = []
        self.down = False
        self.distort: Callable[[str, str, bytes], bytes | None] | None = None
        self.upstream = pebble.directory_url.rsplit("/", 1)[0]  # https://127.0.0.1:port
        self._session = requests.Session()
        self._session.verify = str(pebble.ca_bundle)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            pebble.workdir / "listener-cert.pem", pebble.workdir / "listener-key.pem"
        )
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self._server.server_address[1]}"
        self.directory_url = f"{self.base}/dir"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> AriProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _rewrite(self, data: bytes) -> bytes:
        return data.replace(self.upstream.encode(), self.base.encode())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes | None) -> None:
                headers = {"Host": proxy.base.split("//", 1)[1]}
                if self.headers.get("Content-Type"):
                    headers["Content-Type"] = self.headers["Content-Type"]
                upstream = proxy._session.request(
                    self.command,
                    proxy.upstream + self.path,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    verify=str(proxy.pebble.ca_bundle),  # not REQUESTS_CA_BUNDLE
                )
                content = proxy._rewrite(upstream.content)
                if self.path == "/dir":
                    directory = json.loads(content)
                    directory["renewalInfo"] = f"{proxy.base}/renewal-info"
                    directory.setdefault("meta", {})["profiles"] = {
                        "classic": "the default profile",
                        "shortlived": "six-day certificates",
                    }
                    content = json.dumps(directory).encode()
                if proxy.distort is not None and upstream.ok:
                    content = proxy.distort(self.command, self.path, content) or content
                passed = {
                    k: proxy._rewrite(v.encode()).decode()
                    for k, v in upstream.headers.items()
                    if k.lower() in _PASSED_HEADERS
                }
                self._send(upstream.status_code, passed, content)

            def _outage(self) -> bool:
                if proxy.down:
                    self.close_connection = True  # hang up without an answer
                return proxy.down

            def do_GET(self) -> None:
                if self._outage():
                    return
                if self.path.startswith("/renewal-info/"):
                    cert_id = self.path.rsplit("/", 1)[1]
                    proxy.asked.append(cert_id)
                    start, end = proxy.windows.get(cert_id, proxy.window)
                    body = json.dumps(
                        {
                            "suggestedWindow": {
                                "start": start.isoformat().replace("+00:00", "Z"),
                                "end": end.isoformat().replace("+00:00", "Z"),
                            }
                        }
                    ).encode()
                    self._send(
                        200,
                        {
                            "Content-Type": "application/json",
                            "Retry-After": str(proxy.retry_after),
                        },
                        body,
                    )
                    return
                self._forward(None)

            def do_HEAD(self) -> None:
                if not self._outage():
                    self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self._outage():
                    return
                if self.path.endswith("/order-plz"):  # Pebble's newOrder path
                    jws = json.loads(body)
                    payload = jws.get("payload") or ""
                    padded = payload + "=" * (-len(payload) % 4)
                    proxy.new_orders.append(json.loads(base64.urlsafe_b64decode(padded)))
                self._forward(body)

        return Handler
