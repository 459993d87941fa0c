"""DNS-01 end to end: BIND 9 on loopback takes TSIG-signed RFC 2136 updates from certbroker,
and Pebble's VA (started with -dnsserver pointing at that BIND) reads the TXT records.

example.com and example.net are separate zones with separate keys; each key may only
write TXT records in its own zone, so a CNAME into example.net proves the record was
written with the target zone's DNS account.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.conftest import Cli, make_cli
from tests.integration.conftest import COM_KEY, NET_KEY, add_account
from tests.support.acme_peek import deactivate_authorizations
from tests.support.dns_servers import BindServer, start_bind
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, start_serve, stop_serve, wait_until


@pytest.fixture
def dcli(tmp_path: Path, dns_pebble: PebbleServer, bind: BindServer) -> Cli:
    cli = make_cli(tmp_path / "data", dns_pebble)
    cli.env["CERTBROKER_DNS_RESOLVERS"] = bind.address  # for the CNAME lookups
    cli.register()
    return cli


def forget_authorizations(cli: Cli, cert_id: int = 1) -> None:
    """Deactivate the authorizations of the certificate's last order at Pebble."""
    (account,) = cli.json("account", "list", "--json")
    key_file = cli.data_dir.parent / "account.key"
    cli("account", "export-key", account["name"], "--out", str(key_file))
    assert cli.pebble is not None
    order_url = str(cli.json("cert", "show", str(cert_id))["order_url"])
    assert deactivate_authorizations(cli.pebble, account["uri"], key_file, order_url) == 2


def sans(cli: Cli, cert_id: int) -> list[str]:
    out = cli.data_dir.parent / f"export-{cert_id}"
    cli("cert", "export", str(cert_id), "--format", "pem", "--out", str(out))
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sorted(ext.value.get_values_for_type(x509.DNSName))


def test_one_name_a_wildcard_and_wildcard_plus_apex(dcli: Cli, bind: BindServer) -> None:
    add_account(dcli, bind, "com", COM_KEY, "example.com")
    tested = dcli("dns", "test", "com")
    assert "visible at " + bind.address in tested.stdout
    assert "DNS account com works" in tested.stdout

    # Someone else's TXT value at the same name stays: only what certbroker wrote goes.
    name = "_acme-challenge.www.example.com"
    assert bind.nsupdate(f'update add {name}. 60 IN TXT "not-ours"\n', COM_KEY).returncode == 0
    out = dcli("cert", "request", "www.example.com", "--challenge", "dns-01", "--wait")
    assert "certificate 1 issued" in out.stdout
    assert "TXT records visible at " + bind.address in out.stderr
    assert sans(dcli, 1) == ["www.example.com"]
    assert bind.txt(name) == ["not-ours"]  # ours removed after success

    dcli("cert", "request", "*.example.com", "--challenge", "dns-01", "--wait")
    assert sans(dcli, 2) == ["*.example.com"]

    # Two authorizations, two values at one name, both present when the CA looks.
    out = dcli("cert", "request", "example.com", "*.example.com", "--challenge", "dns-01", "--wait")
    assert "certificate 3 issued" in out.stdout
    assert sans(dcli, 3) == ["*.example.com", "example.com"]
    assert bind.txt("_acme-challenge.example.com") == []
    shown = dcli.json("cert", "show", "3")
    assert shown["dns_account"] == "by zone" and shown["dns_records"] == []


def test_a_cname_is_followed_into_another_zone_with_that_zones_account(
    dcli: Cli, bind: BindServer
) -> None:
    # The acme-dns pattern: certbroker holds no credential for example.com at all, only
    # for the zone the CNAME points into.
    add_account(dcli, bind, "net", NET_KEY, "example.net")
    refused = dcli("cert", "request", "plain.example.com", "--challenge", "dns-01", check=False)
    assert refused.returncode == 2 and "no DNS account for plain.example.com" in refused.stderr
    out = dcli("cert", "request", "alias.example.com", "--challenge", "dns-01", "--wait")
    assert "certificate 1 issued" in out.stdout
    assert "_acme-challenge.alias.example.net written" in out.stderr
    assert sans(dcli, 1) == ["alias.example.com"]
    assert bind.txt("_acme-challenge.alias.example.net") == []


def test_a_wrong_tsig_secret_is_named_and_leaves_no_record(dcli: Cli, bind: BindServer) -> None:
    wrong = "c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1rZXlzLXNlY3JldA=="
    add_account(dcli, bind, "bad", COM_KEY, "example.com", secret=wrong)
    tested = dcli("dns", "test", "bad", check=False)
    assert tested.returncode == 1
    assert "rejected the TSIG signature" in tested.stderr
    assert "--tsig-secret" in tested.stderr
    assert wrong not in tested.stderr + tested.stdout

    failed = dcli(
        "cert", "request", "bad.example.com", "--challenge", "dns-01", "--wait", check=False
    )
    assert failed.returncode == 1
    assert "rejected the TSIG signature" in failed.stderr
    assert bind.txt("_acme-challenge.bad.example.com") == []
    assert dcli.json("cert", "show", "1")["dns_records"] == []
    assert dcli.json("cert", "show", "1")["status"] == "failed"

    # The right key, but a zone it may not change: the server's refusal, explained.
    dcli("dns", "delete", "bad")
    add_account(dcli, bind, "com", COM_KEY, "example.com")
    refused = dcli("dns", "test", "com", "--zone", "example.net", check=False)
    assert refused.returncode == 1
    assert f"the server {bind.address} answered REFUSED" in refused.stderr
    assert "update-policy" in refused.stderr


def test_a_propagation_timeout_names_the_lagging_server(
    dcli: Cli, bind: BindServer, tmp_path: Path
) -> None:
    # A second authoritative server for example.com that never gets the update, as a
    # secondary whose zone transfer is broken.
    with start_bind(tmp_path / "lagging", {"example.com": []}, {}) as lagging:
        add_account(dcli, bind, "com", COM_KEY, "example.com")
        env = {
            "CERTBROKER_DNS_CHECK_SERVERS": f"{bind.address},{lagging.address}",
            "CERTBROKER_DNS_PROPAGATION_TIMEOUT": "1.5",
            "CERTBROKER_RETRY_ATTEMPTS": "1",
        }
        tested = dcli("dns", "test", "com", env=env, check=False)
        assert tested.returncode == 1
        assert f"is not visible at {lagging.address}" in tested.stderr
        assert f"lagging: {lagging.address}" in tested.stderr
        assert bind.txt("_acme-challenge.example.com") == []  # the test record is removed

        failed = dcli(
            "cert", "request", "slow.example.com", "--challenge", "dns-01", "--wait",
            env=env, check=False,
        )  # fmt: skip
        assert failed.returncode == 1
        assert f"is not visible at {lagging.address}" in failed.stderr
        assert bind.txt("_acme-challenge.slow.example.com") == []  # removed after the failure


def test_records_written_before_a_crash_are_removed_when_the_order_ends(
    dcli: Cli, bind: BindServer
) -> None:
    add_account(dcli, bind, "com", COM_KEY, "example.com")
    killed = dcli(
        "cert", "request", "crash.example.com", "--challenge", "dns-01", "--wait",
        env={"CERTBROKER_FAULT_KILL_AFTER": "dns-written"}, check=False,
    )  # fmt: skip
    assert killed.returncode == -9
    assert len(bind.txt("_acme-challenge.crash.example.com")) == 1  # written, then killed
    (record,) = dcli.json("cert", "show", "1")["dns_records"]
    assert record["name"] == "_acme-challenge.crash.example.com" and record["written"]

    dcli("cert", "resume", "1")
    assert sans(dcli, 1) == ["crash.example.com"]
    assert bind.txt("_acme-challenge.crash.example.com") == []


def test_manual_mode_waits_for_a_person_then_verify_issues(dcli: Cli, bind: BindServer) -> None:
    env = {"CERTBROKER_DNS_CHECK_SERVERS": bind.address}
    out = dcli(
        "cert", "request", "manual.example.com", "*.manual.example.com",
        "--challenge", "dns-01", "--dns-account", "manual", "--wait", env=env,
    )  # fmt: skip
    assert "waits for these DNS records" in out.stdout
    assert "cert verify 1" in out.stdout
    shown = dcli.json("cert", "show", "1")
    assert shown["dns_account"] == "manual"
    assert shown["attempts"][-1]["state"] == "awaiting-dns"
    records = shown["dns_records"]
    assert {r["name"] for r in records} == {"_acme-challenge.manual.example.com"}
    assert len({r["value"] for r in records}) == 2  # the name and its wildcard
    assert bind.txt("_acme-challenge.manual.example.com") == []  # nothing written for us
    text = dcli("cert", "show", "1").stdout
    assert f"_acme-challenge.manual.example.com. TXT {records[0]['value']}" in text

    early = dcli(
        "cert", "verify", "1", env={**env, "CERTBROKER_DNS_PROPAGATION_TIMEOUT": "1"},
        check=False,
    )  # fmt: skip
    assert early.returncode == 1
    assert f"not visible at {bind.address}" in early.stderr
    assert dcli.json("cert", "show", "1")["attempts"][-1]["state"] == "awaiting-dns"

    commands = "".join(f'update add {r["name"]}. 60 IN TXT "{r["value"]}"\n' for r in records)
    written = bind.nsupdate(commands, COM_KEY)
    assert written.returncode == 0, written.stderr
    out = dcli("cert", "verify", "1", env=env)
    assert "certificate 1 issued" in out.stdout
    assert sans(dcli, 1) == ["*.manual.example.com", "manual.example.com"]

    # Its renewal needs a person again (new values), and until then the alarm is up.
    # Pebble reuses a valid authorization about once in a hundred even with
    # PEBBLE_AUTHZREUSE=0 (`rand.Intn(100) > 0`), so they are deactivated first.
    forget_authorizations(dcli)
    renewal = dcli("cert", "renew", "1", env=env, check=False)
    assert renewal.returncode == 1
    assert "certificate 1 waits for its DNS records" in renewal.stderr
    (alarm,) = dcli.json("alarms", "--json")
    assert alarm["last_error"].startswith("renewal waits for a person: write these TXT records")
    new_values = {r["value"] for r in dcli.json("cert", "show", "1")["dns_records"]}
    assert len(new_values) == 2 and not new_values & {r["value"] for r in records}


def test_manual_new_challenge_gives_new_values(dcli: Cli, bind: BindServer) -> None:
    dcli(
        "cert", "request", "again.example.com", "--challenge", "dns-01",
        "--dns-account", "manual", "--wait",
    )  # fmt: skip
    (first,) = dcli.json("cert", "show", "1")["dns_records"]
    out = dcli("cert", "verify", "1", "--new-challenge")
    (second,) = dcli.json("cert", "show", "1")["dns_records"]
    assert second["name"] == first["name"] and second["value"] != first["value"]
    assert second["value"] in out.stdout
    missing = dcli("cert", "verify", "2", check=False)
    assert missing.returncode == 2 and "no certificate with ID 2" in missing.stderr


def test_serve_issues_queued_dns01_requests_and_leaves_manual_ones_to_a_person(
    dcli: Cli, bind: BindServer
) -> None:
    add_account(dcli, bind, "com", COM_KEY, "example.com")
    dcli("cert", "request", "queued.example.com", "--challenge", "dns-01")
    dcli("cert", "request", "hand.example.com", "--challenge", "dns-01", "--dns-account", "manual")
    serve = start_serve(dcli, CERTBROKER_DNS_CHECK_SERVERS=bind.address)
    try:
        wait_until(
            "the queued certificate", lambda: dcli.json("cert", "show", "1")["status"] == "valid",
            serve=serve, timeout=60,
        )  # fmt: skip
        wait_until(
            "the manual records",
            lambda: dcli.json("cert", "show", "2")["attempts"][-1]["state"] == "awaiting-dns",
            serve=serve, timeout=60,
        )  # fmt: skip
        assert bind.txt("_acme-challenge.queued.example.com") == []
        (record,) = dcli.json("cert", "show", "2")["dns_records"]
        events = dcli.json("events", "--cert", "2", "--json")
        assert [e["kind"] for e in events] == ["awaiting-dns"]
        assert record["value"] in events[0]["message"]
        # A person writes the record; `cert verify` finishes while serve runs.
        written = bind.nsupdate(f'update add {record["name"]}. 60 IN TXT "{record["value"]}"\n',
                                COM_KEY)  # fmt: skip
        assert written.returncode == 0, written.stderr
        dcli("cert", "verify", "2", env={"CERTBROKER_DNS_CHECK_SERVERS": bind.address})
        assert dcli.json("cert", "show", "2")["status"] == "valid"
    finally:
        stop_serve(serve)


def test_records_of_a_deleted_certificate_are_removed_by_serve(dcli: Cli, bind: BindServer) -> None:
    add_account(dcli, bind, "com", COM_KEY, "example.com")
    killed = dcli(
        "cert", "request", "gone.example.com", "--challenge", "dns-01", "--wait",
        env={"CERTBROKER_FAULT_KILL_AFTER": "dns-written"}, check=False,
    )  # fmt: skip
    assert killed.returncode == -9
    assert len(bind.txt("_acme-challenge.gone.example.com")) == 1
    dcli("cert", "delete", "1")
    serve = start_serve(dcli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        wait_until(
            "the orphaned record removed",
            lambda: bind.txt("_acme-challenge.gone.example.com") == [],
            serve=serve, timeout=30,
        )  # fmt: skip
    finally:
        log = stop_serve(serve)
    assert "removed 1 leftover TXT record(s)" in log


def test_manual_records_are_verified_through_the_api(dcli: Cli, bind: BindServer) -> None:
    secret = dcli("token", "create", "--name", "ops", "--role", "operator").stdout.split()[-1]
    serve = start_api(
        dcli, CERTBROKER_DNS_CHECK_SERVERS=bind.address, CERTBROKER_ADMIN_PASSWORD="x" * 12
    )
    try:
        with httpx.Client(
            base_url=api_url(dcli), headers={"Authorization": f"Bearer {secret}"},
            trust_env=False, timeout=60,
        ) as api:  # fmt: skip
            body = {"names": ["byapi.example.com"], "challenge": "dns-01", "dns_account": "manual"}
            cert_id = api.post("/api/v1/certificates", json=body).json()["id"]
            too_soon = api.post(f"/api/v1/certificates/{cert_id}/verify", json={})
            assert too_soon.status_code in (202, 422)  # serve may not have ordered yet

            def awaiting() -> bool:
                shown = api.get(f"/api/v1/certificates/{cert_id}/progress").json()
                return bool(shown["order"] and shown["order"]["state"] == "awaiting-dns")

            wait_until("the records to write", awaiting, serve=serve)
            records = api.get(f"/api/v1/certificates/{cert_id}/progress").json()["dns_records"]
            assert [r["name"] for r in records] == ["_acme-challenge.byapi.example.com"]
            commands = "".join(
                f'update add {r["name"]}. 60 IN TXT "{r["value"]}"\n' for r in records
            )
            assert bind.nsupdate(commands, COM_KEY).returncode == 0
            verified = api.post(f"/api/v1/certificates/{cert_id}/verify", json={})
            assert verified.status_code == 202, verified.text

            def valid() -> bool:
                return api.get(f"/api/v1/certificates/{cert_id}").json()["status"] == "valid"

            wait_until("the certificate", valid, serve=serve)
            again = api.post(f"/api/v1/certificates/{cert_id}/verify", json={})
            assert again.status_code == 422 and "not waiting" in again.json()["detail"]
    finally:
        stop_serve(serve)
