"""Self-healing against Pebble validating for real: a certificate that failed because
nothing answered HTTP-01 becomes valid by itself once a responder is up, with no command
run; `cert disable` stops the retries and `cert enable` starts them again."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import Cli, make_cli
from tests.support.acme_peek import deactivate_authorizations
from tests.support.pebble import start_pebble
from tests.support.ports import free_port
from tests.support.serve import start_serve, stop_serve, wait_until


def _show(cli: Cli) -> dict[str, object]:
    shown: dict[str, object] = cli.json("cert", "show", "1")
    return shown


def _fail_once_with_nothing_answering(cli: Cli) -> dict[str, object]:
    """`serve` answering on a port the CA does not ask: the validation meets 'connection
    refused', as during a restart or a firewall change."""
    cli.register()
    cli("cert", "request", "heal.example.com")  # queued for serve
    astray = start_serve(
        cli, CERTBROKER_HTTP01_PORT=str(free_port()), CERTBROKER_SCHEDULER_INTERVAL="0.5"
    )
    try:
        wait_until("the failure", lambda: _show(cli)["status"] == "failed", serve=astray)
    finally:
        stop_serve(astray)
    return _show(cli)


def test_a_certificate_heals_by_itself_once_a_responder_answers(cli: Cli) -> None:
    failed = _fail_once_with_nothing_answering(cli)
    alarm = failed["alarm"]
    assert isinstance(alarm, dict) and "connection" in alarm["last_error"]
    next_try = datetime.fromisoformat(str(failed["next_try_at"]))
    assert next_try - datetime.now(UTC) <= timedelta(minutes=1)  # the first retry is soon

    serve = start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")  # the responder is back
    try:
        wait_until(
            "the certificate to heal", lambda: _show(cli)["status"] == "valid",
            serve=serve, timeout=150,
        )  # fmt: skip
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    healed = _show(cli)
    assert healed["alarm"] is None and healed["next_try_at"] is None
    kinds = [e["kind"] for e in cli.json("events", "--cert", "1")]
    assert "retry-queued" in kinds and kinds[-1] == "alarm-cleared"
    cleared = cli.json("events", "--cert", "1")[-1]["message"]
    assert "it was failing for" in cleared and "1 attempt(s) failed meanwhile" in cleared


def test_disable_stops_the_retries_and_enable_starts_them_at_once(cli: Cli) -> None:
    _fail_once_with_nothing_answering(cli)
    out = cli("cert", "disable", "1").stdout
    assert "not retried or renewed until `certbroker cert enable 1`" in out
    assert _show(cli)["next_try_at"] is None and _show(cli)["disabled"] is True

    assert "tries it now" in cli("cert", "enable", "1").stdout
    enabled = _show(cli)
    assert enabled["disabled"] is False
    assert datetime.fromisoformat(str(enabled["next_try_at"])) <= datetime.now(UTC)
    serve = start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until("the retry", lambda: _show(cli)["status"] == "valid", serve=serve)
    finally:
        stop_serve(serve)


def _make_due(cli: Cli) -> None:
    """Time passing, for the store: every certificate's renewal is due."""
    from sqlalchemy import update

    from certbroker.store.db import make_engine
    from certbroker.store.schema import certificates

    engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
    with engine.begin() as conn:
        conn.execute(update(certificates).values(renew_at=datetime.now(UTC) - timedelta(minutes=1)))
    engine.dispose()


@pytest.fixture
def fresh_authz_cli(tmp_path: Path) -> Iterator[Cli]:
    """A CLI on a Pebble of its own that never reuses an authorization (by default Pebble
    reuses half of them), so a renewal validates its names again."""
    with start_pebble(
        tmp_path / "pebble", http_port=free_port(), env={"PEBBLE_AUTHZREUSE": "0"}
    ) as pebble:
        yield make_cli(tmp_path / "data", pebble)


def test_a_renewal_that_failed_validation_is_renewed_once_the_responder_is_back(
    fresh_authz_cli: Cli,
) -> None:
    cli = fresh_authz_cli
    account = cli.register()
    cli("cert", "request", "renew-heal.example.com", "--wait")
    first = _show(cli)
    # The renewal must validate again: Pebble reuses a valid authorization now and then
    # even with PEBBLE_AUTHZREUSE=0 (one run in about a hundred renewed without asking).
    key_file = cli.data_dir.parent / "account.key"
    cli("account", "export-key", "main", "--out", str(key_file))
    assert cli.pebble is not None
    deactivated = deactivate_authorizations(
        cli.pebble, account["uri"], key_file, str(first["order_url"])
    )
    assert deactivated == 1
    _make_due(cli)
    astray = start_serve(
        cli, CERTBROKER_HTTP01_PORT=str(free_port()), CERTBROKER_SCHEDULER_INTERVAL="0.5"
    )
    try:
        wait_until("the failed renewal", lambda: _show(cli)["next_try_at"], serve=astray)
    finally:
        stop_serve(astray)
    failing = _show(cli)
    assert failing["status"] == "valid" and failing["serial"] == first["serial"]  # in use
    assert failing["renewal_reason"] != "stopped" and failing["alarm"] is not None

    serve = start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until(
            "the renewal to heal", lambda: _show(cli)["serial"] != first["serial"],
            serve=serve, timeout=150,
        )  # fmt: skip
    finally:
        stop_serve(serve)
    renewed = _show(cli)
    assert renewed["alarm"] is None and renewed["next_try_at"] is None
    history = renewed["history"]
    assert isinstance(history, list) and [h["serial"] for h in history] == [first["serial"]]


def test_sixty_certificates_survive_serve_killed_with_validation_down(cli: Cli) -> None:
    """serve SIGKILLed while 60 certificates are in flight, and nothing answering HTTP-01
    for a few seconds; the next serve finishes every one, each issued exactly once."""
    cli.register()
    names = [f"storm{i}.example.com" for i in range(60)]
    batch = cli.data_dir.parent / "storm.txt"
    batch.write_text("\n".join(names) + "\n")
    cli("cert", "request", "--from", str(batch))  # queued for serve
    first = start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    wait_until(
        "some issued", lambda: any(c["status"] == "valid" for c in cli.json("cert", "list")),
        serve=first,
    )  # fmt: skip
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    time.sleep(3)  # the validation port is down: the CA finds nothing there
    second = start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until(
            "all 60 valid",
            lambda: all(c["status"] == "valid" for c in cli.json("cert", "list")),
            serve=second, timeout=240,
        )  # fmt: skip
    finally:
        stop_serve(second)
    for cert_id in range(1, 61):
        shown = cli.json("cert", "show", str(cert_id))
        issued = [a for a in shown["attempts"] if a["state"] == "valid"]
        assert len(issued) == 1 and shown["history"] == [], f"certificate {cert_id}: {shown}"
