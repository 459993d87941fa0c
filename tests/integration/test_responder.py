"""The HTTP-01 responder in `serve` answers tokens from the store, and 404 otherwise."""

from __future__ import annotations

import http.client
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from certbroker.store.db import make_engine, migrate
from certbroker.store.repository import Repository
from tests.conftest import make_cli
from tests.support.ports import wait_for_tcp


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_serve_answers_tokens_written_by_another_process(tmp_path: Path) -> None:
    cli = make_cli(tmp_path / "data", None)
    port = int(cli.env["CERTBROKER_HTTP01_PORT"])
    serve = subprocess.Popen(
        [sys.executable, "-m", "certbroker", "serve"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_tcp("127.0.0.1", port, timeout=20)
        # Another process (here: this test) writes a token into the same store.
        engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
        migrate(engine)
        repo = Repository(engine)
        repo.put_challenges(
            None, [("tok-123_-", "tok-123_-.thumb", "a.example.com", "http-01")], datetime.now(UTC)
        )
        assert _get(port, "/.well-known/acme-challenge/tok-123_-") == (200, b"tok-123_-.thumb")
        assert _get(port, "/.well-known/acme-challenge/tok-123_-", "HEAD")[0] == 200
        assert _get(port, "/.well-known/acme-challenge/unknown")[0] == 404
        assert _get(port, "/.well-known/acme-challenge/")[0] == 404
        assert _get(port, "/.well-known/acme-challenge/tok-123_-/x")[0] == 404
        assert _get(port, "/")[0] == 404
        assert _get(port, "/index.html")[0] == 404
        repo.delete_challenge("tok-123_-")
        assert _get(port, "/.well-known/acme-challenge/tok-123_-")[0] == 404
        engine.dispose()
    finally:
        serve.terminate()
        out, _ = serve.communicate(timeout=30)
    assert serve.returncode == 0, out
    assert f"HTTP-01 on 127.0.0.1:{port}" in out


def test_serve_reports_a_taken_port(tmp_path: Path) -> None:
    import socket

    cli = make_cli(tmp_path / "data", None)
    port = int(cli.env["CERTBROKER_HTTP01_PORT"])
    with socket.socket() as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        result = subprocess.run(
            [sys.executable, "-m", "certbroker", "serve"],
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen for HTTP-01 on 127.0.0.1:{port}" in result.stderr
