"""The HTTP-01 responder speaks enough HTTP/1.1 for every CA, and no more, on a real socket."""

from __future__ import annotations

import contextlib
import http.client
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from certbroker.challenges import http01
from certbroker.challenges.http01 import Responder, bind_responder
from certbroker.domain.errors import CertbrokerError
from certbroker.store.db import make_engine, migrate
from certbroker.store.repository import Repository
from certbroker.store.token_lookup import SqliteTokenLookup, token_lookup

TOKEN = "tok-123_-abc"
VALUE = f"{TOKEN}.thumbprint"
PATH = f"/.well-known/acme-challenge/{TOKEN}"


def _dict_lookup(store: dict[str, str]) -> Callable[[str], str | None]:
    def lookup(token: str) -> str | None:
        if token == "broken":
            raise RuntimeError("database is locked")
        if token.startswith("slow"):
            time.sleep(0.3)
        return store.get(token)

    return lookup


@pytest.fixture(params=["inline", "thread-pool"])
def responder(request: pytest.FixtureRequest) -> Iterator[Responder]:
    store = {TOKEN: VALUE, "slow1": "slow1.x", "fast2": "fast2.x"}
    server = bind_responder(
        "127.0.0.1", 0, _dict_lookup(store), inline=request.param == "inline"
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


def _raw(port: int, data: bytes, *, read_until_closed: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while read_until_closed:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_answers_the_key_authorization_and_404_for_everything_else(responder: Responder) -> None:
    status, body, response = _get(responder.port, PATH)
    assert (status, body) == (200, VALUE.encode())
    assert response.getheader("Content-Type") == "text/plain"
    assert response.getheader("Date")
    status, body, response = _get(responder.port, PATH, "HEAD")
    assert (status, body, response.getheader("Content-Length")) == (200, b"", str(len(VALUE)))
    assert _get(responder.port, PATH + "?x=1")[:2] == (200, VALUE.encode())
    for path in (
        "/.well-known/acme-challenge/unknown",
        "/.well-known/acme-challenge/",
        f"{PATH}/x",
        "/",
        "/index.html",
    ):
        assert _get(responder.port, path)[0] == 404, path


def test_absolute_form_targets_are_answered(responder: Responder) -> None:
    answer = _raw(responder.port, f"GET http://a.example.com{PATH} HTTP/1.0\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n" + VALUE.encode())


def test_keep_alive_serves_many_requests_on_one_connection(responder: Responder) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", responder.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", PATH)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, VALUE.encode())
        assert len(responder.connections) == 1
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(responder: Responder) -> None:
    # The first look-up is slow (0.3 s): its answer must still come first.
    requests = (
        b"GET /.well-known/acme-challenge/slow1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /.well-known/acme-challenge/fast2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /.well-known/acme-challenge/none HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    answer = _raw(responder.port, requests)
    assert answer.count(b"HTTP/1.1 ") == 3
    assert answer.index(b"slow1.x") < answer.index(b"fast2.x") < answer.index(b"404 Not Found")
    assert answer.rstrip().endswith(b"not found")


def test_http_1_0_closes_after_the_answer(responder: Responder) -> None:
    answer = _raw(responder.port, f"GET {PATH} HTTP/1.0\r\n\r\n".encode())
    assert b"Connection: close\r\n" in answer
    assert answer.endswith(VALUE.encode())  # and the server closed: _raw read to the end


def test_other_methods_get_405_naming_get_and_head(responder: Responder) -> None:
    status, _, response = _get(responder.port, PATH, "DELETE")
    assert status == 405
    assert response.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"nonsense\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000, 431),  # never ends
    ],
)
def test_bad_requests_are_answered_and_closed(
    responder: Responder, request_bytes: bytes, status: int
) -> None:
    answer = _raw(responder.port, request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close\r\n" in answer


def test_a_failing_store_gives_503_and_the_next_request_is_served(responder: Responder) -> None:
    assert _get(responder.port, "/.well-known/acme-challenge/broken")[0] == 503
    assert _get(responder.port, PATH)[:2] == (200, VALUE.encode())


def test_slow_and_idle_clients_are_cut_off(
    responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http01, "REQUEST_TIMEOUT", 0.2)
    monkeypatch.setattr(http01, "IDLE_TIMEOUT", 0.2)
    with socket.create_connection(("127.0.0.1", responder.port), timeout=5) as slow:
        slow.sendall(b"GET " + PATH.encode())  # and never the rest
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    with socket.create_connection(("127.0.0.1", responder.port), timeout=5) as idle:
        assert idle.recv(4096) == b""  # closed without a word


def test_connections_beyond_the_limit_are_refused(
    responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http01, "MAX_CONNECTIONS", 1)
    with socket.create_connection(("127.0.0.1", responder.port), timeout=5) as first:
        first.sendall(f"GET {PATH} HTTP/1.1\r\n\r\n".encode())
        assert first.recv(4096).endswith(VALUE.encode())
        with socket.create_connection(("127.0.0.1", responder.port), timeout=5) as second:
            second.sendall(f"GET {PATH} HTTP/1.1\r\n\r\n".encode())
            with pytest.raises(ConnectionResetError):
                if second.recv(4096) == b"":
                    raise ConnectionResetError
        first.sendall(f"GET {PATH} HTTP/1.1\r\n\r\n".encode())
        assert first.recv(4096).endswith(VALUE.encode())


def test_stop_closes_connections_and_frees_the_port() -> None:
    server = bind_responder("127.0.0.1", 0, _dict_lookup({TOKEN: VALUE}), inline=True).start()
    port = server.port
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    server.stop()
    with contextlib.suppress(ConnectionResetError):  # closed or reset: either way, ended
        assert client.recv(10) == b""
    client.close()
    again = bind_responder("127.0.0.1", port, _dict_lookup({}), inline=True).start()
    again.stop()


def test_a_taken_port_is_reported_when_binding() -> None:
    server = bind_responder("127.0.0.1", 0, _dict_lookup({}))
    try:
        with pytest.raises(
            CertbrokerError, match=f"cannot listen for HTTP-01 on 127.0.0.1:{server.port}"
        ):
            bind_responder("127.0.0.1", server.port, _dict_lookup({}))
    finally:
        server.stop()


def test_sqlite_lookup_sees_tokens_written_by_another_connection(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    repo = Repository(engine)
    lookup, inline = token_lookup(engine, repo.key_authorization)
    assert isinstance(lookup, SqliteTokenLookup) and inline
    server = bind_responder("127.0.0.1", 0, lookup, inline=inline).start()
    try:
        assert _get(server.port, PATH)[0] == 404
        repo.put_challenges(None, [(TOKEN, VALUE, "a.example.com", "http-01")], datetime.now(UTC))
        assert _get(server.port, PATH)[:2] == (200, VALUE.encode())
        # A writer holding the store meanwhile does not stop the answers (WAL).
        with repo._write():  # holds the write transaction open
            done = threading.Event()
            answers: list[int] = []
            threading.Thread(
                target=lambda: (answers.append(_get(server.port, PATH)[0]), done.set())
            ).start()
            assert done.wait(5)
        assert answers == [200]
        repo.delete_challenge(TOKEN)
        assert _get(server.port, PATH)[0] == 404
    finally:
        server.stop()
        engine.dispose()


def test_sqlite_lookup_fails_loudly_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "a dir" / "store.db"
    path.parent.mkdir()
    lookup = SqliteTokenLookup(str(path))
    with pytest.raises(sqlite3.OperationalError):
        lookup("x")  # no store (yet): the responder answers 503
    assert not path.exists()  # and none was made
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    assert lookup("x") is None
    engine.dispose()


def test_other_stores_are_asked_through_the_repository() -> None:
    engine = create_engine("sqlite://")  # like PostgreSQL: no file a second connection can open

    def from_repository(token: str) -> str | None:
        return None

    lookup, inline = token_lookup(engine, from_repository)
    assert lookup is from_repository and not inline
