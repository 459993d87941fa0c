"""The API and console's HTTP server (uvicorn) in a thread of `certbroker serve`, over
HTTPS when the settings name a certificate of this broker for it
(`console_certificate_id`): its chain and key are loaded from the store, and loaded
again when a renewal replaces it, without a restart."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certbroker.api.limits import MAX_BODY
from certbroker.domain.errors import CertbrokerError, StoreUnavailable
from certbroker.services.outage import store_outage
from certbroker.wiring import Broker

log = logging.getLogger("certbroker.api")
TLS_CHECK = 5.0  # seconds between looks for a renewed console certificate


class ConsoleTls:
    """The console's TLS context and the certificate in it, reloaded when it changes."""

    def __init__(self, broker: Broker, cert_id: int) -> None:
        self.broker = broker
        self.cert_id = cert_id
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.fingerprint = ""
        self.load()

    def load(self) -> bool:
        """Load the certificate if it changed; True when it did."""
        fingerprint, chain, key = self.broker.certificates.tls_material(self.cert_id)
        if fingerprint == self.fingerprint:
            return False
        # ssl loads chains and keys from files only: a private directory, gone at once.
        with tempfile.TemporaryDirectory(dir=self.broker.settings.data_dir) as tmp:
            os.chmod(tmp, 0o700)
            chain_file, key_file = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            chain_file.write_bytes(chain)
            fd = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key)
            self.context.load_cert_chain(chain_file, key_file)
        self.fingerprint = fingerprint
        return True


class WebServer:
    def __init__(
        self,
        broker: Broker,
        address: tuple[str, int],
        workers_problems: Callable[[], list[str]] | None = None,
    ) -> None:
        self.broker = broker
        self.address = address
        self.workers_problems = workers_problems
        self.tls: ConsoleTls | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def _bind(self) -> socket.socket:
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, so asyncio sets TCP_NODELAY on each connection: with protocol 0
        # it does not, and Nagle's algorithm held every answer's body for the client's
        # delayed ACK, about 40 ms a request (bench/api.py).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise CertbrokerError(
                f"cannot listen on {host}:{port} for the API and console ({exc.strerror}); "
                "set CERTBROKER_LISTEN to a free address"
            ) from None
        sock.listen(128)
        self.address = (host, sock.getsockname()[1])
        return sock

    def start(self) -> WebServer:
        import uvicorn

        from certbroker.api.app import create_app

        cert_id = self.broker.runtime.broker_settings()["console_certificate_id"]
        if cert_id is not None:
            try:
                self.tls = ConsoleTls(self.broker, int(cert_id))
            except StoreUnavailable:
                raise  # serve does not start (rather than on plain HTTP for want of a database)
            except CertbrokerError as exc:
                log.error("the console stays on plain HTTP: %s", exc)
        # Bound here, so a taken port is one clear line before anything else starts.
        sock = self._bind()
        config = uvicorn.Config(
            create_app(self.broker, self.workers_problems),
            log_config=None,  # certbroker's logging, as set up already
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            # Compression costs ~49 KiB of zlib state per websocket (1,000 agents: 105 vs
            # 56 KiB each, docs/benchmarks.md); their messages are small and rare.
            ws_per_message_deflate=False,
            # A websocket message is capped as a request body is (api/limits.py): uvicorn's
            # default, 16 MiB, let any client token make a node hold that much per socket.
            ws_max_size=MAX_BODY,
            # X-Forwarded-For and -Proto, from the trusted proxies only.
            proxy_headers=True,
            forwarded_allow_ips=self.broker.settings.trusted_proxies or "",
        )
        config.load()
        # uvicorn's own start and stop lines (under the name "uvicorn.error") say nothing
        # certbroker's one line does not; its warnings and errors stay.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        if self.tls is not None:
            config.ssl = self.tls.context  # uvicorn serves with it as it is
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise CertbrokerError(f"the API server did not start on {self.url}")
        if self.tls is not None:
            threading.Thread(target=self._follow_renewals, name="console-tls", daemon=True).start()
        return self

    def _follow_renewals(self) -> None:
        assert self.tls is not None
        while not self._stop.wait(TLS_CHECK):
            try:
                if self.tls.load():
                    log.info("console certificate %d renewed: now serving it", self.tls.cert_id)
            except StoreUnavailable as exc:  # serving the one loaded before meanwhile
                store_outage.lost(exc)
            except CertbrokerError as exc:
                log.warning("console certificate: %s; serving the one loaded before", exc)
            except Exception:  # a store hiccup must not end the watcher
                log.exception("console certificate: reload failed")

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
