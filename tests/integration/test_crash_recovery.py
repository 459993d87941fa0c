"""A process SIGKILLed at any step of an order loses nothing: the order resumes, the key
survives, and exactly one certificate is issued (the same order, never a second one)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from certbroker.crypto.keys import key_matches_certificate, load_private_key
from tests.conftest import Cli
from tests.support.acme_peek import post_as_get

STEPS = ["ordered", "presented", "answered", "finalizing", "downloaded"]


def _killed_request(cli: Cli, name: str, step: str) -> dict[str, object]:
    result = cli(
        "cert",
        "request",
        name,
        "--wait",
        check=False,
        env={"CERTBROKER_FAULT_KILL_AFTER": step},
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    shown: dict[str, object] = cli.json("cert", "show", "1")
    return shown


def _assert_one_good_certificate(
    cli: Cli, tmp_path: Path, order_url: object, account_uri: str
) -> None:
    shown = cli.json("cert", "show", "1")
    assert shown["status"] == "valid"
    attempts = shown["attempts"]
    assert len(attempts) == 1, attempts
    assert attempts[0]["state"] == "valid"
    if attempts[0]["order_url"] != order_url:
        # Ordering again is allowed only when the interrupted order issued nothing: its
        # validation ran while the killed process's responder was gone.
        key_file = tmp_path / "account.pem"
        cli("account", "export-key", "main", "--out", str(key_file))
        assert cli.pebble is not None
        old = post_as_get(cli.pebble, account_uri, key_file, str(order_url))
        assert old["status"] == "invalid" and "certificate" not in old
    out = tmp_path / "pem"
    cli("cert", "export", "1", "--format", "pem", "--out", str(out))
    leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert key_matches_certificate(load_private_key((out / "privkey.pem").read_bytes()), leaf)


@pytest.mark.parametrize("step", STEPS)
def test_killed_cli_resumes_with_cert_resume(cli: Cli, tmp_path: Path, step: str) -> None:
    account = cli.register()
    before = _killed_request(cli, f"crash-{step}.example.com", step)
    assert before["status"] == "pending"
    (attempt,) = before["attempts"]  # type: ignore[misc]
    expected_state = "finalizing" if step == "downloaded" else step
    assert attempt["state"] == expected_state
    assert attempt["order_url"]
    resumed = cli("cert", "resume", "1")
    assert "resuming order" in resumed.stderr
    _assert_one_good_certificate(cli, tmp_path, attempt["order_url"], account["uri"])


def _serve(cli: Cli) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "certbroker", "serve"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def _wait_until(cli: Cli, predicate: object, timeout: float = 120) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        listed: list[dict[str, object]] = cli.json("cert", "list")
        if predicate(listed):  # type: ignore[operator]
            return listed
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; certificates: {listed}")
        time.sleep(0.3)


def test_serve_picks_up_an_order_left_by_a_killed_process(cli: Cli, tmp_path: Path) -> None:
    account = cli.register()
    before = _killed_request(cli, "pickup.example.com", "answered")
    order_url = before["attempts"][0]["order_url"]  # type: ignore[index]
    serve = _serve(cli)
    try:
        _wait_until(cli, lambda certs: certs[0]["status"] == "valid")
    finally:
        log = _stop(serve)
    assert serve.returncode == 0, log
    _assert_one_good_certificate(cli, tmp_path, order_url, account["uri"])


def test_serve_issues_queued_certificates_concurrently(cli: Cli) -> None:
    cli.register()
    names = [f"pool{i}.example.com" for i in range(8)]
    for name in names:
        queued = cli("cert", "request", name)
        assert "queued" in queued.stdout
    assert {c["status"] for c in cli.json("cert", "list")} == {"pending"}
    serve = _serve(cli)
    try:
        listed = _wait_until(cli, lambda certs: all(c["status"] == "valid" for c in certs))
    finally:
        _stop(serve)
    assert sorted(n for c in listed for n in c["names"]) == sorted(names)  # type: ignore[attr-defined]
    # Orders overlapped in time: the pool worked on several at once.
    spans = []
    for cert in listed:
        (attempt,) = cli.json("cert", "show", str(cert["id"]))["attempts"]
        spans.append((attempt["created_at"], attempt["finished_at"]))
    first_finish = min(end for _, end in spans)
    started_before_first_finish = [s for s in spans if s[0] < first_finish]
    assert len(started_before_first_finish) == len(names)


def test_serve_answers_http01_for_a_cli_on_the_same_store(cli: Cli) -> None:
    """With `serve` holding the HTTP-01 port, `cert request --wait` uses its responder."""
    cli.register()
    serve = _serve(cli)
    try:
        time.sleep(1.0)
        assert serve.poll() is None
        result = cli("cert", "request", "shared.example.com", "--wait")
        assert "answering HTTP-01" not in result.stderr
        assert cli.json("cert", "show", "1")["status"] == "valid"
    finally:
        _stop(serve)
