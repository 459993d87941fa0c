"""A webhook receiver for tests: an HTTP server on a free port in a thread that records
every POST, checks its Standard Webhooks signature with the secret it is given (computed
here with hmac, independently of certbroker's code) and answers what the test says."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    answered: int
    signature_ok: bool | None  # None: no secret known yet


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check: v1,<base64 HMAC-SHA256 keyed with the base64-decoded
    secret over id.timestamp.body>, one of the space-separated signatures."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    sent = headers.get("webhook-signature", "").split()
    return any(
        s.startswith("v1,") and hmac.compare_digest(s[3:].encode(), expected.encode()) for s in sent
    )


class Receiver:
    """`answer(n)` is the status for the n-th request (1, 2, …); 200 by default."""

    def __init__(self, answer: Callable[[int], int] | None = None) -> None:
        self.answer = answer or (lambda _n: 200)
        self.secret: str | None = None
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    status = receiver.answer(len(receiver.received) + 1)
                    ok = (
                        None
                        if receiver.secret is None
                        else signature_ok(receiver.secret, headers, body)
                    )
                    receiver.received.append(Received(self.path, headers, body, status, ok))
                answer = f"status {status} from the test receiver".encode()
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/certbroker"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)
