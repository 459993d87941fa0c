"""ARI (RFC 9773) end to end: Debian's Pebble 2.4 has no renewalInfo, so a proxy in front
of it adds one (tests/support/ari_proxy.py; fixtures `ari` and `ari_cli` in conftest.py)
and serves the window each test chooses."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from certbroker.crypto.ari import ari_cert_id
from tests.conftest import Cli
from tests.support.ari_proxy import AriProxy
from tests.support.pebble import PebbleServer
from tests.support.serve import start_serve, stop_serve, wait_until


def _leaf(cli: Cli, tmp_path: Path) -> x509.Certificate:
    out = tmp_path / "pem"
    cli("cert", "export", "1", "--format", "pem", "--out", str(out))
    return x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())


def test_renewal_is_planned_inside_the_cas_window_and_names_what_it_replaces(
    ari: AriProxy, ari_cli: Cli, tmp_path: Path
) -> None:
    ari_cli("cert", "request", "ari.example.com", "--wait")
    shown = ari_cli.json("cert", "show", "1")
    start, end = ari.window
    assert shown["renewal_reason"] == "ari"
    assert start <= datetime.fromisoformat(shown["renew_at"]) <= end
    cert_id = ari_cert_id(_leaf(ari_cli, tmp_path))
    assert ari.asked == [cert_id]  # asked for this certificate's window
    assert "replaces" not in ari.new_orders[0]  # a first certificate replaces nothing

    ari_cli("cert", "renew", "1")
    assert ari.new_orders[-1]["replaces"] == cert_id  # on the wire, RFC 9773 §5
    renewal = ari_cli.json("cert", "show", "1")["attempts"][-1]
    assert renewal["purpose"] == "renew" and renewal["replaces"] == cert_id


def test_serve_renews_at_once_when_the_ca_moves_the_window_into_the_past(
    ari: AriProxy, ari_cli: Cli, tmp_path: Path
) -> None:
    """A CA asks for early renewal (say, before a mass revocation) by moving the window
    into the past; certbroker hears it at its next look and renews right away."""
    ari_cli("cert", "request", "ari-early.example.com", "--wait")
    first = ari_cli.json("cert", "show", "1")
    old_id = ari_cert_id(_leaf(ari_cli, tmp_path))
    now = datetime.now(UTC)
    ari.windows[old_id] = (now - timedelta(hours=2), now - timedelta(hours=1))
    _ask_again_now(ari_cli)  # the CA's Retry-After (an hour) has passed

    serve = start_serve(ari_cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until("the renewal", lambda: ari_cli.json("cert", "show", "1")["history"], serve=serve)
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    (past,) = ari_cli.json("cert", "show", "1")["history"]
    assert past["serial"] == first["serial"]
    assert past["replaced_because"] == "renewed when due (ari-past)"
    assert ari.asked.count(old_id) == 2  # at issuance, and again when it was time
    assert ari.new_orders[-1]["replaces"] == old_id


def _ask_again_now(cli: Cli) -> None:
    """Time passing, for the store: the certificate's next ARI look is due."""
    from sqlalchemy import update

    from certbroker.store.db import make_engine
    from certbroker.store.schema import certificates

    engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
    with engine.begin() as conn:
        conn.execute(
            update(certificates).values(ari_next_check=datetime.now(UTC) - timedelta(seconds=1))
        )
    engine.dispose()


def test_a_profile_the_ca_advertises_goes_into_every_order(ari: AriProxy, ari_cli: Cli) -> None:
    ari_cli("cert", "request", "profiled.example.com", "--profile", "shortlived", "--wait")
    assert ari.new_orders[-1]["profile"] == "shortlived"
    assert ari_cli.json("cert", "show", "1")["profile"] == "shortlived"
    ari_cli("cert", "renew", "1")
    assert ari.new_orders[-1]["profile"] == "shortlived"  # renewals keep it


def test_a_profile_the_ca_does_not_offer_is_refused(ari: AriProxy, ari_cli: Cli) -> None:
    proc = ari_cli("cert", "request", "x.example.com", "--profile", "forever", check=False)
    assert proc.returncode == 2
    assert "--profile 'forever' is not offered" in proc.stderr
    assert "classic" in proc.stderr and "shortlived" in proc.stderr
    assert ari_cli.json("cert", "list") == []  # nothing stored


def test_a_profile_at_a_ca_without_profiles_is_refused(cli: Cli) -> None:
    cli.register()  # Pebble 2.4 itself advertises no profiles
    proc = cli("cert", "request", "x.example.com", "--profile", "classic", check=False)
    assert proc.returncode == 2
    assert "offers no profiles" in proc.stderr
    assert cli.json("cert", "list") == []


def _events(cli: Cli, kind: str) -> list[dict[str, object]]:
    return [e for e in cli.json("events", "--json") if e["kind"] == kind]


def test_a_ca_outage_heals_by_itself(ari: AriProxy, ari_cli: Cli) -> None:
    """The CA goes away while `serve` has work; when it is back, every certificate ends
    valid and every alarm clears, nobody acting."""
    names = [f"outage{i}.example.com" for i in range(5)]
    for name in names:
        ari_cli("cert", "request", name)
    ari.down = True
    serve = start_serve(ari_cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until("a failed attempt", lambda: _events(ari_cli, "attempt-failed"), serve=serve)
        assert ari_cli.json("alarms", "--json")  # failing, and said so
        ari.down = False
        wait_until(
            "every certificate valid",
            lambda: all(c["status"] == "valid" for c in ari_cli.json("cert", "list")),
            serve=serve,
            timeout=120,
        )
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    assert ari_cli.json("alarms", "--json") == []
    failed = _events(ari_cli, "attempt-failed")
    assert all("cannot reach the CA" in str(e["message"]) for e in failed)


def test_a_renewal_that_needs_a_person_is_tried_again_later_not_abandoned(
    ari: AriProxy, ari_cli: Cli
) -> None:
    """A deactivated account fails every order: no retry fixes that by itself, so the
    next try waits the ceiling (6 hours, less a jitter of up to a tenth); it is still
    tried, since the fix happens outside certbroker. `cert disable` stops it."""
    ari_cli("cert", "request", "needs-a-person.example.com", "--wait")
    ari_cli("account", "deactivate", "main", "--yes")  # every order now fails for good
    _make_due(ari_cli)
    serve = start_serve(ari_cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until("the failed renewal", lambda: _events(ari_cli, "failed"), serve=serve)
        time.sleep(3)  # several scheduler ticks: none may queue the renewal again
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    shown = ari_cli.json("cert", "show", "1")
    assert [a["state"] for a in shown["attempts"]] == ["valid", "failed"]
    assert shown["status"] == "valid"  # the current certificate is still good
    wait = datetime.fromisoformat(shown["next_try_at"]) - datetime.now(UTC)
    assert timedelta(hours=5.3) < wait <= timedelta(hours=6)
    alarm = shown["alarm"]
    assert alarm["next_try_at"] == shown["next_try_at"]
    assert "tries again at" in alarm["last_error"]
    assert "needs a change outside certbroker first" in alarm["last_error"]
    assert "`certbroker cert disable 1` stops it" in alarm["last_error"]
    ari_cli("cert", "disable", "1")
    stopped = ari_cli.json("cert", "show", "1")
    assert stopped["disabled"] is True and stopped["next_try_at"] is None


def _make_due(cli: Cli) -> None:
    from sqlalchemy import update

    from certbroker.store.db import make_engine
    from certbroker.store.schema import certificates

    engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
    with engine.begin() as conn:
        conn.execute(
            update(certificates).values(
                renew_at=datetime.now(UTC) - timedelta(minutes=1), ari_next_check=None
            )
        )
    engine.dispose()


def test_ca_fallback_when_the_first_ca_is_down(
    ari: AriProxy, ari_cli: Cli, pebble: PebbleServer
) -> None:
    """Two accounts at two CAs (the proxy, and Pebble itself): with the first CA gone,
    the second issues, and the events say so."""
    ari_cli(
        "account", "register", "--directory", pebble.directory_url, "--email",
        "second@example.com", "--agree-tos", "--ca-bundle", str(pebble.ca_bundle),
        "--name", "second",
    )  # fmt: skip
    ari.down = True
    out = ari_cli(
        "cert", "request", "fallback.example.com", "--account", "main", "--account", "second",
        "--wait", env={"CERTBROKER_RETRY_ATTEMPTS": "2"},
    )  # fmt: skip
    assert "falling back to account 'second'" in out.stderr
    shown = ari_cli.json("cert", "show", "1")
    assert shown["status"] == "valid" and shown["fallback_accounts"] == ["second"]
    first, second = shown["attempts"]
    assert first["state"] == "failed" and "cannot reach the CA" in first["error"]
    assert second["state"] == "valid" and second["order_url"].startswith(
        pebble.directory_url.rsplit("/", 1)[0]
    )  # the second CA's order
    (fallback,) = _events(ari_cli, "ca-fallback")
    assert "account 'main'" in str(fallback["message"])
    assert "falling back to account 'second'" in str(fallback["message"])
    assert ari_cli.json("alarms", "--json") == []  # cleared by the success


@pytest.mark.parametrize(
    ("accounts", "hint"),
    [
        (["main", "main"], "named twice"),
        (["main", "nosuch"], "nosuch"),
    ],
)
def test_fallback_accounts_are_checked(ari_cli: Cli, accounts: list[str], hint: str) -> None:
    args = [a for name in accounts for a in ("--account", name)]
    proc = ari_cli("cert", "request", "x.example.com", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert hint in proc.stderr
    assert ari_cli.json("cert", "list") == []


def test_serve_renews_inside_the_window_the_ca_suggests(
    ari: AriProxy, ari_cli: Cli, tmp_path: Path
) -> None:
    ari_cli("cert", "request", "ari-window.example.com", "--wait")
    old_id = ari_cert_id(_leaf(ari_cli, tmp_path))
    now = datetime.now(UTC)
    window = (now + timedelta(seconds=2), now + timedelta(seconds=8))
    ari.windows[old_id] = window
    _ask_again_now(ari_cli)
    serve = start_serve(ari_cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until("the renewal", lambda: ari_cli.json("cert", "show", "1")["history"], serve=serve)
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    (past,) = ari_cli.json("cert", "show", "1")["history"]
    replaced = datetime.fromisoformat(past["replaced_at"])
    # Ordered inside the window; stored a moment later (one tick and one issuance).
    assert window[0] <= replaced <= window[1] + timedelta(seconds=5)
    assert past["replaced_because"] == "renewed when due (ari)"
    assert ari.new_orders[-1]["replaces"] == old_id


def test_one_unreadable_certificate_does_not_stop_the_others_renewal_checks(
    ari: AriProxy, ari_cli: Cli, tmp_path: Path
) -> None:
    from sqlalchemy import update

    from certbroker.store.db import make_engine
    from certbroker.store.schema import certificates

    ari_cli("cert", "request", "broken.example.com", "--wait")
    ari_cli("cert", "request", "healthy.example.com", "--wait")
    out = tmp_path / "pem2"
    ari_cli("cert", "export", "2", "--format", "pem", "--out", str(out))
    healthy_id = ari_cert_id(x509.load_pem_x509_certificate((out / "cert.pem").read_bytes()))
    now = datetime.now(UTC)
    ari.windows[healthy_id] = (now - timedelta(hours=2), now - timedelta(hours=1))
    _ask_again_now(ari_cli)
    engine = make_engine(f"sqlite:///{ari_cli.data_dir / 'certbroker.db'}")
    with engine.begin() as conn:  # a row this code cannot read, first in line
        conn.execute(
            update(certificates).where(certificates.c.id == 1).values(cert_pem="not a PEM")
        )
    engine.dispose()
    serve = start_serve(ari_cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until(
            "the healthy certificate's renewal",
            lambda: ari_cli.json("cert", "show", "2")["history"],
            serve=serve,
        )
    finally:
        log = stop_serve(serve)
    assert "certificate 1: asking for renewal information failed" in log
    assert log.count("certificate 1: asking for renewal information failed") == 1  # an hour
    assert ari_cli.json("cert", "show", "1")["history"] == []
