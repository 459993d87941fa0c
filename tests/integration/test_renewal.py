"""Renewal against a real Pebble: on request, by `serve` when due, and after a crash.

The old certificate stays current until the new one is stored, then it is kept in the
certificate's history; the key policy decides whether the key changes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certbroker.crypto.keys import key_matches_certificate, load_private_key
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port
from tests.support.serve import start_serve, stop_serve, wait_until

SHORT_LIFETIME = 30  # seconds: one third left after 20 s, so `serve` sees it fall due


def _exported(cli: Cli, cert_id: int, out: Path) -> tuple[x509.Certificate, Any]:
    cli("cert", "export", str(cert_id), "--format", "pem", "--out", str(out))
    leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    return leaf, load_private_key((out / "privkey.pem").read_bytes())


def _public(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_renew_now_replaces_the_certificate_and_keeps_the_old_one(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    cli("cert", "request", "renew-now.example.com", "--wait")
    before = cli.json("cert", "show", "1")
    assert before["renew_at"] and before["renewal_reason"] == "one-third-of-lifetime-left"
    assert before["history"] == []
    old_leaf, _ = _exported(cli, 1, tmp_path / "old")

    out = cli("cert", "renew", "1")
    assert "certificate 1 renewed" in out.stdout
    assert "renewal planned for" in out.stderr  # progress, as with request --wait

    after = cli.json("cert", "show", "1")
    assert after["status"] == "valid" and after["serial"] != before["serial"]
    (past,) = after["history"]
    assert past["serial"] == before["serial"]
    assert past["not_after"] == before["not_after"]
    assert past["replaced_because"] == "renewed early, on request"
    assert [a["purpose"] for a in after["attempts"]] == ["issue", "renew"]
    new_leaf, new_key = _exported(cli, 1, tmp_path / "new")
    assert key_matches_certificate(new_key, new_leaf)
    assert _public(new_leaf) != _public(old_leaf)  # key policy "new": a new key
    text = cli("cert", "show", "1").stdout
    assert f"serial {before['serial']}" in text and "renewed early, on request" in text
    assert "(renewal)" in text


def test_renew_with_key_reuse_keeps_the_key(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    cli("cert", "request", "reuse.example.com", "--key-policy", "reuse", "--wait")
    old_leaf, _ = _exported(cli, 1, tmp_path / "old")
    cli("cert", "renew", "1")
    new_leaf, new_key = _exported(cli, 1, tmp_path / "new")
    assert new_leaf.serial_number != old_leaf.serial_number
    assert _public(new_leaf) == _public(old_leaf)
    assert key_matches_certificate(new_key, new_leaf)


def test_renew_retries_a_certificate_that_never_issued(cli: Cli) -> None:
    cli.register()
    cli("cert", "request", "retry.example.com")  # queued only
    out = cli("cert", "renew", "1")
    assert "certificate 1 renewed" in out.stdout
    shown = cli.json("cert", "show", "1")
    assert shown["status"] == "valid" and shown["history"] == []


def test_nothing_due_is_said_so(cli: Cli) -> None:
    cli.register()
    cli("cert", "request", "fresh.example.com", "--wait")
    assert "nothing to renew" in cli("cert", "renew", "--due").stdout
    assert cli.json("cert", "renew", "--due", "--json") == []
    assert cli.json("cert", "show", "1")["history"] == []


# No "presented"/"answered": Pebble, like Let's Encrypt, reuses the account's valid
# authorization for the name, so a renewal goes from ordered straight to finalizing.
@pytest.mark.parametrize("step", ["ordered", "finalizing", "downloaded"])
def test_a_renewal_killed_at_any_step_ends_with_exactly_one_new_certificate(
    cli: Cli, tmp_path: Path, step: str
) -> None:
    cli.register()
    cli("cert", "request", "crash-renew.example.com", "--wait")
    first = cli.json("cert", "show", "1")
    killed = cli("cert", "renew", "1", check=False, env={"CERTBROKER_FAULT_KILL_AFTER": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    during = cli.json("cert", "show", "1")
    # Killed mid-renewal: the old certificate is still the current one.
    assert during["serial"] == first["serial"] and during["status"] == "valid"
    assert during["history"] == []
    cli("cert", "renew", "1")  # resumes the interrupted renewal
    after = cli.json("cert", "show", "1")
    assert after["serial"] != first["serial"]
    assert [h["serial"] for h in after["history"]] == [first["serial"]]
    assert [a["purpose"] for a in after["attempts"]] == ["issue", "renew"]
    leaf, key = _exported(cli, 1, tmp_path / "pem")
    assert key_matches_certificate(key, leaf)


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        ([], "say what to renew"),
        (["--all"], "--force"),
        (["--force", "1"], "--force only goes with --all"),
        (["--due", "1"], "one of them"),
        (["99"], "no certificate with ID 99"),
        (["x"], "'x' is not a certificate ID"),
    ],
)
def test_renew_refuses_unclear_requests(offline_cli: Cli, args: list[str], hint: str) -> None:
    proc = offline_cli("cert", "renew", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert hint in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


# -- serve renews by itself --------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    server = start_pebble(
        tmp_path_factory.mktemp("short-pebble"),
        http_port=free_port(),
        validity_seconds=SHORT_LIFETIME,
    )
    try:
        yield server
    finally:
        server.stop()


def test_serve_renews_due_certificates_by_itself(
    short_pebble: PebbleServer, tmp_path: Path
) -> None:
    cli = make_cli(tmp_path / "data", short_pebble)
    cli.register()
    cli("cert", "request", "auto-new.example.com", "--wait")
    cli("cert", "request", "auto-reuse.example.com", "--key-policy", "reuse", "--wait")
    first = {c["id"]: c for c in (cli.json("cert", "show", str(i)) for i in (1, 2))}
    old = {i: _exported(cli, i, tmp_path / f"old{i}")[0] for i in (1, 2)}
    serve = start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="1")
    try:
        wait_until(
            "both renewals",
            lambda: all(cli.json("cert", "show", str(i))["history"] for i in (1, 2)),
            serve=serve,
            timeout=SHORT_LIFETIME * 4,
            interval=0.5,
        )
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    assert "renewal due for" in log
    for cert_id in (1, 2):
        shown = cli.json("cert", "show", str(cert_id))
        past = shown["history"][0]
        assert past["serial"] == first[cert_id]["serial"]
        assert past["replaced_because"] == "renewed when due (one-third-of-lifetime-left)"
        # Renewed after it fell due, and before it expired.
        due, replaced, expiry = (
            datetime.fromisoformat(v)
            for v in (first[cert_id]["renew_at"], past["replaced_at"], past["not_after"])
        )
        assert due <= replaced < expiry
    new1, key1 = _exported(cli, 1, tmp_path / "new1")
    new2, key2 = _exported(cli, 2, tmp_path / "new2")
    assert key_matches_certificate(key1, new1) and key_matches_certificate(key2, new2)
    assert _public(new1) != _public(old[1])  # policy new
    assert _public(new2) == _public(old[2])  # policy reuse


@pytest.fixture(scope="module")
def pebble_90_days(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    """Let's Encrypt's lifetime; Pebble's own five years would put a 15-day policy past
    the emergency point (1/20 of the lifetime: 91 days)."""
    server = start_pebble(
        tmp_path_factory.mktemp("pebble-90"), http_port=free_port(), validity_seconds=90 * 86400
    )
    try:
        yield server
    finally:
        server.stop()


def test_renewal_policy_per_certificate_and_global(
    pebble_90_days: PebbleServer, tmp_path: Path
) -> None:
    cli = make_cli(tmp_path / "data", pebble_90_days)
    cli.register()
    cli("cert", "request", "policy-15.example.com", "--renew-before-days", "15", "--wait")
    cli(
        "cert",
        "request",
        "policy-20.example.com",
        "--wait",
        env={"CERTBROKER_RENEW_BEFORE_DAYS": "20"},
    )
    for cert_id, days, stored in ((1, 15, 15.0), (2, 20, None)):
        shown = cli.json("cert", "show", str(cert_id))
        assert shown["renewal_reason"] == "days-before-expiry"
        assert shown["renew_before_days"] == stored
        lead = datetime.fromisoformat(shown["not_after"]) - datetime.fromisoformat(
            shown["renew_at"]
        )
        # The policy's lead time, plus at most 12 hours of jitter (never later).
        assert timedelta(days=days) <= lead <= timedelta(days=days, hours=12)


def test_renewal_settings_from_a_config_table(offline_cli: Cli, tmp_path: Path) -> None:
    conf = tmp_path / "certbroker.toml"
    conf.write_text("[renewal]\ndays_before_expiry = 15\nscheduler_interval = 5\n")
    shown = offline_cli.json("--config", str(conf), "config", "show")
    assert shown["renew_before_days"] == {"value": "15.0", "source": f"file {conf}"}
    assert shown["scheduler_interval"]["value"] == "5.0"


def test_a_policy_past_the_emergency_point_gives_way_to_it(cli: Cli) -> None:
    """Pebble's certificates last five years: 15 days before expiry is later than the
    emergency point (1/20 of the lifetime left), so the emergency point wins."""
    cli.register()
    cli("cert", "request", "late.example.com", "--renew-before-days", "15", "--wait")
    shown = cli.json("cert", "show", "1")
    assert shown["renewal_reason"] == "emergency"
    not_before, not_after, renew_at = (
        datetime.fromisoformat(shown[k]) for k in ("not_before", "not_after", "renew_at")
    )
    assert renew_at == not_after - (not_after - not_before) / 20


def _broker(cli: Cli) -> Any:
    """The broker on the CLI's store, in this process: quick set-up and inspection."""
    from certbroker.config import load_settings
    from certbroker.wiring import build

    return build(load_settings(environ=cli.env))


def _make_due(broker: Any, cert_ids: list[int]) -> None:
    """Time passing, for the store: these certificates' renewal moment is now past."""
    from sqlalchemy import update

    from certbroker.store.schema import certificates

    with broker.repo.engine.begin() as conn:
        conn.execute(
            update(certificates)
            .where(certificates.c.id.in_(cert_ids))
            .values(renew_at=datetime.now(UTC) - timedelta(minutes=1))
        )


def _serve(cli: Cli) -> subprocess.Popen[str]:
    return start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")


def test_serve_killed_in_a_renewal_storm_renews_each_certificate_exactly_once(
    cli: Cli,
) -> None:
    from certbroker.domain.models import CertificateStatus, EventKind
    from certbroker.services.requests import CertificateRequest

    count = 50
    cli.register()
    broker = _broker(cli)
    ids = [
        broker.requests.request(CertificateRequest(names=[f"storm{i}.example.com"]))[0].id
        for i in range(count)
    ]

    def all_valid() -> bool:
        return all(c.status is CertificateStatus.VALID for c in broker.certificates.search())

    def renewed() -> int:
        return sum(1 for e in broker.repo.list_events() if e.kind is EventKind.RENEWED)

    serve = _serve(cli)
    try:
        wait_until("the first issuance", all_valid, serve=serve, timeout=180)
    finally:
        stop_serve(serve)
    first = {c.id: c.serial for c in broker.certificates.search()}
    _make_due(broker, ids)

    serve = _serve(cli)
    try:  # kill it once some renewals are done and others are under way
        wait_until("the first renewals", lambda: renewed() >= 5, serve=serve, timeout=180)
    finally:
        serve.kill()
        serve.communicate(timeout=60)
    assert renewed() < count, "the storm was over before the kill"

    serve = _serve(cli)
    try:
        wait_until(
            "every renewal",
            lambda: renewed() >= count and not any(broker.repo.active_order_of(i) for i in ids),
            serve=serve,
            timeout=240,
        )
        time.sleep(2)  # a few more scheduler ticks: nothing may be renewed twice
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    assert renewed() == count
    for cert_id in ids:
        cert = broker.certificates.get(cert_id)
        assert cert.status is CertificateStatus.VALID and cert.serial != first[cert_id]
        assert [h.serial for h in broker.repo.history_of(cert_id)] == [first[cert_id]]
        renewals = [o for o in broker.repo.orders_of(cert_id) if o.purpose.value == "renew"]
        assert [o.state.value for o in renewals] == ["valid"]


def test_renew_all_with_force_renews_every_valid_certificate(cli: Cli) -> None:
    cli.register()
    for name in ("all1.example.com", "all2.example.com"):
        cli("cert", "request", name, "--wait")
    cli("cert", "request", "never.example.com")  # queued, never issued: not renewed
    before = {c["id"]: c["serial"] for c in cli.json("cert", "list")}
    renewed = cli.json("cert", "renew", "--all", "--force", "--json")
    assert sorted(c["id"] for c in renewed) == [1, 2]
    for cert in renewed:
        assert cert["serial"] != before[cert["id"]]
        assert [h["replaced_because"] for h in cert["history"]] == ["renewed early, on request"]
    assert cli.json("cert", "show", "3")["status"] == "pending"


def test_renew_with_an_imported_key_keeps_that_key(cli: Cli, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    key_file = tmp_path / "imported.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cli.register()
    cli(
        "cert", "request", "imported.example.com", "--key-policy", "imported",
        "--key-file", str(key_file), "--wait",
    )  # fmt: skip
    cli("cert", "renew", "1")
    leaf, _ = _exported(cli, 1, tmp_path / "pem")
    assert cli.json("cert", "show", "1")["history"]
    assert _public(leaf) == key.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
