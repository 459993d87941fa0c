"""Events and alarms against a real Pebble: a validation that fails raises an alarm with
the CA's problem and the challenge that failed; the next success clears it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Cli
from tests.support.ports import free_port


def test_a_failing_validation_raises_an_alarm_that_the_next_success_clears(cli: Cli) -> None:
    cli.register()
    # Our responder on another port than the one Pebble's VA connects to: the CA cannot
    # fetch the token, as when a firewall or proxy rule is missing.
    unreachable = {"CERTBROKER_HTTP01_PORT": str(free_port())}
    failed = cli("cert", "request", "alarm.example.com", "--wait", check=False, env=unreachable)
    assert failed.returncode == 1, failed.stderr

    (alarm,) = cli.json("alarms", "--json")
    assert alarm["certificate_id"] == 1 and alarm["names"] == ["alarm.example.com"]
    assert "connection" in alarm["last_error"]
    assert "http-01 challenge for alarm.example.com" in alarm["last_error"]
    text = cli("alarms").stdout
    assert "certificate 1 (alarm.example.com): failing since" in text

    events = cli.json("events", "--cert", "1", "--json")
    assert [e["kind"] for e in events] == ["failed", "alarm-raised"]
    assert events[0]["problem"]["type"] == "urn:ietf:params:acme:error:connection"
    shown = cli.json("cert", "show", "1")
    assert shown["alarm"]["last_error"] == alarm["last_error"]
    assert [e["kind"] for e in shown["events"]] == ["failed", "alarm-raised"]
    assert "alarm failing since" in cli("cert", "show", "1").stdout

    cli("cert", "renew", "1")  # the responder is reachable again: retry now
    assert cli.json("alarms", "--json") == []
    assert cli("alarms").stdout.strip() == "no active alarms"
    kinds = [e["kind"] for e in cli.json("events", "--cert", "1", "--json")]
    assert kinds == ["failed", "alarm-raised", "issued", "alarm-cleared"]
    assert cli.json("cert", "show", "1")["alarm"] is None


def test_events_since_and_for_one_certificate(cli: Cli) -> None:
    cli.register()
    cli("cert", "request", "ev1.example.com", "--wait")
    cli("cert", "request", "ev2.example.com", "--wait")
    everything = cli.json("events", "--json")
    assert [(e["certificate_id"], e["kind"]) for e in everything] == [(1, "issued"), (2, "issued")]
    assert "issued: serial" in everything[0]["message"]
    assert [e["certificate_id"] for e in cli.json("events", "--cert", "2", "--json")] == [2]
    assert len(cli.json("events", "--since", "1h", "--json")) == 2
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert cli.json("events", "--since", future, "--json") == []
    assert "no events" in cli("events", "--since", future).stdout
    assert "issued" in cli("events").stdout


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["events", "--since", "yesterday"], "--since 'yesterday'"),
        (["events", "--since", "5y"], "--since '5y'"),
        (["events", "--cert", "42"], "no certificate with ID 42"),
        (["events", "--cert", "x"], "'x' is not a certificate ID"),
    ],
)
def test_bad_event_queries_are_refused(offline_cli: Cli, args: list[str], hint: str) -> None:
    proc = offline_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert hint in proc.stderr


def test_failed_validations_are_capped_per_name_and_hour(cli: Cli) -> None:
    """After `validation_failures_per_hour` failures, no challenge for that name is
    answered until the oldest is an hour old, even when the cause is gone: the CA's own
    limit (Let's Encrypt: 5 an hour) must never lock the name out."""
    cli.register()
    cap = {"CERTBROKER_VALIDATION_FAILURES_PER_HOUR": "2"}
    unreachable = {**cap, "CERTBROKER_HTTP01_PORT": str(free_port())}
    first = cli("cert", "request", "capped.example.com", "--wait", check=False, env=unreachable)
    assert first.returncode == 1, first.stderr
    second = cli("cert", "renew", "1", check=False, env=unreachable)
    assert second.returncode == 1, second.stderr

    held = cli("cert", "renew", "1", check=False, env=cap)  # reachable now, but capped
    assert held.returncode == 1, held.stderr
    assert "capped.example.com failed validation 2 times in the last hour" in held.stderr
    error = held.stderr.strip().splitlines()[-1]  # after the progress lines, one error
    assert error.startswith("error: certificate 1 is not issued yet: capped.example.com")
    shown = cli.json("cert", "show", "1")
    last = shown["attempts"][-1]
    assert last["state"] == "presented"  # ordered, tokens stored, nothing answered
    assert last["attempts"] == 0  # holding back is not a failed attempt
    kinds = [e["kind"] for e in cli.json("events", "--cert", "1", "--json")]
    assert kinds == ["failed", "alarm-raised", "failed", "held-back"]
    assert cli.json("alarms", "--json")[0]["certificate_id"] == 1  # still failing

    other = cli("cert", "request", "uncapped.example.com", "--wait", env=cap)
    assert "issued" in other.stdout  # the cap is per name
