"""The responder's fall-through (CERTBROKER_HTTP01_UPSTREAM): what it would answer 404 or
405 goes to a real upstream HTTP server, started here, and its answer comes back as is."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from certbroker.challenges.http01 import Responder, bind_responder
from certbroker.challenges.upstream import Upstream
from certbroker.config import load_settings
from certbroker.domain.errors import ConfigError
from tests.support.ports import free_port

TOKEN = "tok-123_-abc"
VALUE = f"{TOKEN}.thumbprint"
PATH = f"/.well-known/acme-challenge/{TOKEN}"
BODY = b"\x00upstream\xff body\r\n\r\nwith a blank line"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class UpstreamServer:
    port: int
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(state: UpstreamServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            if self.path == "/slow":
                state.release.wait(30)
            if self.path == "/redirect":
                self.send_response(302, "Found Elsewhere")
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            elif self.path == "/until-close":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"all of it")
                self.close_connection = True
            else:
                answer = BODY if self.command != "POST" else b"got " + body
                self.send_response(418 if self.command == "POST" else 200, "Custom Reason")
                self.send_header("X-Custom", "kept as is")
                self.send_header("Content-Type", "application/x-test")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any

    return Handler


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    state = UpstreamServer(0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


def _lookup(store: dict[str, str]) -> Callable[[str], str | None]:
    return store.get


@pytest.fixture(params=["inline", "thread-pool"])
def broker(request: pytest.FixtureRequest, upstream: UpstreamServer) -> Iterator[Responder]:
    """The responder, knowing TOKEN, falling through to `upstream` (answers within 0.5 s)."""
    server = bind_responder(
        "127.0.0.1",
        0,
        _lookup({TOKEN: VALUE}),
        inline=request.param == "inline",
        upstream=Upstream("127.0.0.1", upstream.port, read_timeout=0.5),
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _ask(
    port: int, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, str, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.reason, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_an_unknown_token_gets_the_upstreams_answer_as_is(
    broker: Responder, upstream: UpstreamServer
) -> None:
    path = "/.well-known/acme-challenge/not-ours?x=1"
    status, reason, headers, body = _ask(broker.port, "GET", path, Host="a.example")
    assert (status, reason, body) == (200, "Custom Reason", BODY)
    assert headers["X-Custom"] == "kept as is"
    assert headers["Content-Type"] == "application/x-test"
    assert headers["Server"].startswith("BaseHTTP")  # the upstream's, not certbroker's
    [seen] = upstream.seen
    assert (seen.method, seen.path) == ("GET", path)  # the target unchanged
    assert seen.headers["Host"] == "a.example"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert seen.headers["X-Forwarded-Host"] == "a.example"
    assert seen.headers["Connection"] == "close"  # the client's own is hop-by-hop


def test_other_paths_and_head_fall_through(broker: Responder, upstream: UpstreamServer) -> None:
    assert _ask(broker.port, "GET", "/index.html")[3] == BODY
    status, _, headers, body = _ask(broker.port, "HEAD", "/.well-known/acme-challenge/x")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(BODY)))
    assert [(s.method, s.path) for s in upstream.seen] == [
        ("GET", "/index.html"),
        ("HEAD", "/.well-known/acme-challenge/x"),
    ]


def test_a_known_token_is_answered_here_and_never_forwarded(
    broker: Responder, upstream: UpstreamServer
) -> None:
    status, _, headers, body = _ask(broker.port, "GET", PATH)
    assert (status, body, headers["Server"]) == (200, VALUE.encode(), "certbroker")
    assert _ask(broker.port, "HEAD", PATH)[0] == 200
    assert upstream.seen == []


def test_a_redirect_is_relayed_not_followed(broker: Responder, upstream: UpstreamServer) -> None:
    status, reason, headers, body = _ask(broker.port, "GET", "/redirect")
    assert (status, reason, headers["Location"], body) == (
        302,
        "Found Elsewhere",
        "/elsewhere",
        b"",
    )
    assert [s.path for s in upstream.seen] == ["/redirect"]  # /elsewhere never asked


def test_other_methods_are_forwarded_with_their_body(
    broker: Responder, upstream: UpstreamServer
) -> None:
    payload = b"name=value&x=" + b"y" * 100_000
    status, reason, _, body = _ask(
        broker.port, "POST", PATH, payload, **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (status, reason, body) == (418, "Custom Reason", b"got " + payload)
    assert _ask(broker.port, "DELETE", "/thing")[0] == 200
    assert [(s.method, s.path) for s in upstream.seen] == [("POST", PATH), ("DELETE", "/thing")]
    assert upstream.seen[0].body == payload
    assert upstream.seen[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_a_chunked_request_body_is_refused(broker: Responder, upstream: UpstreamServer) -> None:
    answer = _raw(
        broker.port,
        b"POST /form HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 411 Length Required\r\n")
    assert upstream.seen == []


def test_two_content_lengths_are_refused_not_forwarded(
    broker: Responder, upstream: UpstreamServer
) -> None:
    answer = _raw(
        broker.port,
        b"POST /form HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
    )
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert upstream.seen == []


def test_stopping_ends_requests_being_forwarded(upstream: UpstreamServer) -> None:
    server = bind_responder(
        "127.0.0.1", 0, _lookup({}), upstream=Upstream("127.0.0.1", upstream.port)
    ).start()
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    client.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    while not upstream.seen:  # the upstream holds it (30 s read timeout)
        threading.Event().wait(0.02)
    server.stop()
    try:
        assert client.recv(100) == b""  # ended without an answer
    except ConnectionResetError:
        pass
    finally:
        client.close()


def test_keep_alive_goes_on_across_forwarded_and_own_answers(
    broker: Responder, upstream: UpstreamServer
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=10)
    try:
        for path, expected in [
            ("/chunked", b"hello world"),
            (PATH, VALUE.encode()),
            ("/other", BODY),
            (PATH, VALUE.encode()),
        ]:
            conn.request("GET", path)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, expected), path
        assert len(broker.connections) == 1
    finally:
        conn.close()


def test_pipelined_requests_mixing_both_are_answered_in_order(broker: Responder) -> None:
    answer = _raw(
        broker.port,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        + f"GET {PATH} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        + b"GET /until-close HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    assert answer.count(b"HTTP/1.1 200 ") == 3
    assert answer.index(BODY) < answer.index(VALUE.encode()) < answer.index(b"all of it")
    assert answer.endswith(b"all of it")  # close-delimited: relayed, then the connection ends


def test_a_dead_upstream_gives_502() -> None:
    server = bind_responder(
        "127.0.0.1", 0, _lookup({}), upstream=Upstream("127.0.0.1", free_port())
    ).start()
    try:
        status, _, _, body = _ask(server.port, "GET", "/.well-known/acme-challenge/x")
        assert (status, body) == (502, b"upstream unreachable\n")
    finally:
        server.stop()


def test_an_upstream_that_never_accepts_gives_502() -> None:
    """Its accept queue is full (backlog 0, one connection waiting, never accepted), so
    a further connect hangs in the SYN stage: only the connect timeout ends it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            server = bind_responder(
                "127.0.0.1", 0, _lookup({}),
                upstream=Upstream("127.0.0.1", port, connect_timeout=0.2, read_timeout=60),
            ).start()  # fmt: skip
            try:
                status, _, _, body = _ask(server.port, "GET", "/.well-known/acme-challenge/x")
                assert (status, body) == (502, b"upstream unreachable\n")
            finally:
                server.stop()


def test_a_slow_upstream_gives_504(broker: Responder, upstream: UpstreamServer) -> None:
    status, _, _, body = _ask(broker.port, "GET", "/slow")
    assert (status, body) == (504, b"upstream timed out\n")
    upstream.release.set()
    assert _ask(broker.port, "GET", PATH)[0] == 200  # and the responder goes on


def test_without_an_upstream_it_is_404_and_405_as_before(upstream: UpstreamServer) -> None:
    server = bind_responder("127.0.0.1", 0, _lookup({TOKEN: VALUE})).start()
    try:
        assert _ask(server.port, "GET", "/.well-known/acme-challenge/x")[0] == 404
        assert _ask(server.port, "GET", "/index.html")[0] == 404
        assert _ask(server.port, "DELETE", "/x")[0] == 405
        assert _ask(server.port, "POST", "/x", b"body")[0] == 400
        assert _ask(server.port, "GET", PATH)[3] == VALUE.encode()
    finally:
        server.stop()
    assert upstream.seen == []


def test_the_setting_must_be_http_host_port(tmp_path: Path) -> None:
    env = {"CERTBROKER_HTTP01_PORT": "8080"}
    good = {**env, "CERTBROKER_HTTP01_UPSTREAM": "http://127.0.0.1:8081"}
    assert load_settings(environ=good).http01_upstream == "http://127.0.0.1:8081"
    assert load_settings(environ=env).http01_upstream == ""
    for bad in (
        "127.0.0.1:8081",
        "https://web:443",
        "http://web",
        "http://web:8081/path",
        "http://user:pw@web:81",
        "http://web:99999",
    ):
        with pytest.raises(ConfigError, match="CERTBROKER_HTTP01_UPSTREAM: http01_upstream") as e:
            load_settings(environ={**env, "CERTBROKER_HTTP01_UPSTREAM": bad})
        assert "http://HOST:PORT" in str(e.value)
    with pytest.raises(ConfigError, match="the responder itself"):
        load_settings(environ={**env, "CERTBROKER_HTTP01_UPSTREAM": "http://localhost:8080"})
