"""A process SIGKILLed at any step of an order loses nothing: the order resumes, the key
survives, and exactly one certificate is issued (the same order, never a second one)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from certbroker.crypto.keys import key_matches_certificate, load_private_key
from tests.conftest import Cli
from tests.support.acme_peek import post_as_get
from tests.support.serve import start_serve, stop_serve, wait_until

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


_serve = start_serve
_stop = stop_serve


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
    spans = _work_spans(cli, listed)
    first_finish = min(end for _, end in spans)
    started_before_first_finish = [s for s in spans if s[0] < first_finish]
    assert len(started_before_first_finish) == len(names)


def _work_spans(cli: Cli, listed: list[dict[str, object]]) -> list[tuple[str, str]]:
    """(started, finished) of each certificate's attempt: when a worker had it."""
    spans = []
    for cert in listed:
        (attempt,) = cli.json("cert", "show", str(cert["id"]))["attempts"]
        assert attempt["started_at"] >= attempt["created_at"]
        spans.append((attempt["started_at"], attempt["finished_at"]))
    return spans


def _worker_processes(serve: subprocess.Popen[str]) -> list[int]:
    """PIDs of the serve's worker processes (its children running certbroker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == serve.pid and b"certbroker.worker_processes" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
    wait_until(what, predicate, timeout=timeout, interval=0.1)


@pytest.mark.parametrize("processes", [1, 2])
def test_serve_works_in_several_processes(cli: Cli, processes: int) -> None:
    """One worker per process: orders overlap only when several processes work."""
    cli.register()
    names = [f"proc{processes}-{i}.example.com" for i in range(6)]
    for name in names:
        cli("cert", "request", name)
    serve = _serve(cli, CERTBROKER_WORKER_PROCESSES=str(processes), CERTBROKER_WORKERS="1")
    try:
        _wait_for("the worker processes", lambda: len(_worker_processes(serve)) == processes - 1)
        others = _worker_processes(serve)
        listed = _wait_until(cli, lambda certs: all(c["status"] == "valid" for c in certs))
    finally:
        log = _stop(serve)
    assert serve.returncode == 0, log
    assert f"{processes} worker process" in log
    assert not [pid for pid in others if _running(pid)]  # they stopped with serve
    spans = _work_spans(cli, listed)
    overlapping = [
        (a, b) for a, b in itertools.combinations(spans, 2) if a[0] < b[1] and b[0] < a[1]
    ]
    assert bool(overlapping) == (processes > 1), spans


def test_a_killed_serve_leaves_no_worker_process_behind(cli: Cli) -> None:
    serve = _serve(cli, CERTBROKER_WORKER_PROCESSES="3")
    try:
        _wait_for("the worker processes", lambda: len(_worker_processes(serve)) == 2)
        others = _worker_processes(serve)
    finally:
        serve.kill()
        serve.communicate(timeout=30)
    _wait_for("the worker processes to end", lambda: not any(map(_running, others)))


def _read_until(proc: subprocess.Popen[str], marker: str) -> str:
    """What the process printed up to and including the first line holding `marker`."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"ended before printing {marker!r}: {''.join(lines)}")


def test_serve_restarts_a_worker_process_that_died(cli: Cli) -> None:
    cli.register()
    serve = _serve(cli, CERTBROKER_WORKER_PROCESSES="2", CERTBROKER_WORKERS="1")
    log = ""
    try:
        log = _read_until(serve, "certbroker serving")  # its worker process is up
        (first,) = _worker_processes(serve)
        os.kill(first, signal.SIGKILL)
        _wait_for(
            "a new worker process",
            lambda: [p for p in _worker_processes(serve) if p != first and _running(p)] != [],
        )
        assert serve.poll() is None
        cli("cert", "request", "after-restart.example.com")  # queued for serve
        _wait_until(cli, lambda certs: certs[0]["status"] == "valid")
    finally:
        log += _stop(serve)
    assert serve.returncode == 0, log
    assert f"worker process 1 (pid {first}) ended with exit code -9; restarting" in log


def test_serve_answers_http01_for_a_cli_on_the_same_store(cli: Cli) -> None:
    """With `serve` holding the HTTP-01 port, `cert request --wait` uses its responder."""
    cli.register()
    serve = _serve(cli)
    try:
        _read_until(serve, "certbroker serving")  # its responder holds the port
        assert serve.poll() is None
        result = cli("cert", "request", "shared.example.com", "--wait")
        assert "answering HTTP-01" not in result.stderr
        assert cli.json("cert", "show", "1")["status"] == "valid"
    finally:
        _stop(serve)


def test_an_order_the_ca_made_before_the_process_died_is_resumed_not_made_twice(
    cli: Cli, tmp_path: Path
) -> None:
    """Killed between the CA's answer to new-order and its URL being recorded: the
    process that resumes finds the order in the account's orders list (RFC 8555 7.1.2.1)
    instead of ordering again, so the CA holds one order for the certificate."""
    account = cli.register()
    killed = cli("cert", "request", "orphan.example.com", "--wait", check=False,
                 env={"CERTBROKER_FAULT_KILL_AFTER": "order-created"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (attempt,) = cli.json("cert", "show", "1")["attempts"]
    assert attempt["order_url"] is None  # the CA made it; this store never heard of it
    resumed = cli("cert", "resume", "1")
    assert "was created before its process died: resuming it" in resumed.stderr
    key_file = tmp_path / "account.pem"
    cli("account", "export-key", "main", "--out", str(key_file))
    assert cli.pebble is not None
    listed = post_as_get(cli.pebble, account["uri"], key_file, account["uri"])["orders"]
    (only,) = post_as_get(cli.pebble, account["uri"], key_file, listed)["orders"]
    shown = cli.json("cert", "show", "1")
    assert shown["status"] == "valid" and shown["attempts"][0]["order_url"] == only
