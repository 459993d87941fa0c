"""Reverse proxies and the fall-through (docs/reverse-proxy.md): real nginx (Debian) in
front of the broker while Pebble validates through it, and `serve` forwarding what it does
not know to CERTBROKER_HTTP01_UPSTREAM."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Cli, make_cli
from tests.support.nginx import http_preamble, nginx_binary, run_nginx, user_directive
from tests.support.ports import free_port, wait_for_tcp
from tests.support.serve import start_serve, stop_serve

FALLBACK = b"served by the web server behind\n"

# As in docs/reverse-proxy.md, with this test's ports and directories.
NGINX_CONF = """\
worker_processes 1;
{user}
error_log {work}/error.log warn;
events {{
    worker_connections 64;
}}
http {{
    access_log {work}/access.log;
    default_type text/plain;
{preamble}
    server {{
        listen 127.0.0.1:{port};
        root {work}/www;

        location ^~ /.well-known/acme-challenge/ {{
            proxy_pass http://127.0.0.1:{broker};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_intercept_errors on;        # the broker's 404 ...
            error_page 404 = @fallback;       # ... goes on to what was here before
        }}
        location @fallback {{
            # What answered here before certbroker: a webroot other tools write into.
        }}
    }}
}}
"""


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "proxied.example.com"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_pebble_validates_through_nginx_which_falls_through_on_404(
    cli: Cli, tmp_path: Path
) -> None:
    binary = nginx_binary()
    assert cli.pebble is not None
    nginx_port = cli.pebble.http_port  # where Pebble validates
    broker_port = free_port()
    work = tmp_path / "nginx"
    challenges = work / "www" / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "left-by-another-tool").write_bytes(FALLBACK)
    conf = NGINX_CONF.format(
        user=user_directive(),
        work=work,
        preamble=http_preamble(work),
        port=nginx_port,
        broker=broker_port,
    )
    cli.register()
    serve = start_serve(cli, CERTBROKER_HTTP01_PORT=str(broker_port))
    try:
        wait_for_tcp("127.0.0.1", broker_port, timeout=60)
        with run_nginx(binary, work, nginx_port, conf):
            details = cli.json(
                "cert",
                "request",
                "proxied.example.com",
                "www.proxied.example.com",
                "--wait",
                env={"CERTBROKER_HTTP01_PORT": str(broker_port)},
            )
            assert details["status"] == "valid"
            # The fall-through: an unknown token, answered 404 by the broker, is
            # served from nginx's webroot; one in neither place is nginx's 404.
            path = "/.well-known/acme-challenge/"
            assert _get(nginx_port, path + "left-by-another-tool") == (200, FALLBACK)
            assert _get(nginx_port, path + "unknown")[0] == 404
            assert _get(broker_port, path + "left-by-another-tool")[0] == 404
    finally:
        out = stop_serve(serve)
    # Pebble's validations came through nginx and the broker answered them.
    log = (work / "access.log").read_text()
    validations = [
        line
        for line in log.splitlines()
        if "/.well-known/acme-challenge/" in line and "Pebble" in line and '" 200 ' in line
    ]
    assert len(validations) >= 2, log
    assert serve.returncode == 0, out


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(301)
        self.send_header("Location", "https://" + (self.headers["Host"] or "") + self.path)
        self.send_header("X-Upstream", "yes")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def web_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_serve_forwards_what_it_does_not_know_to_the_upstream(
    tmp_path: Path, web_server: int
) -> None:
    cli = make_cli(tmp_path / "data", None)
    port = int(cli.env["CERTBROKER_HTTP01_PORT"])
    serve = start_serve(cli, CERTBROKER_HTTP01_UPSTREAM=f"http://127.0.0.1:{web_server}")
    try:
        wait_for_tcp("127.0.0.1", port, timeout=60)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/page?q=1", headers={"Host": "web.example.com"})
            response = conn.getresponse()
            assert response.status == 301  # relayed, not followed
            assert response.getheader("Location") == "https://web.example.com/page?q=1"
            assert response.getheader("X-Upstream") == "yes"
        finally:
            conn.close()
    finally:
        out = stop_serve(serve)
    assert serve.returncode == 0, out
