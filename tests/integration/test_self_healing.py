"""Self-healing against Pebble validating for real: a certificate that failed because
nothing answered HTTP-01 becomes valid by itself once a responder is up, with no command
run; `cert disable` stops the retries and `cert enable` starts them again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.conftest import Cli
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
