"""DNS-01 through dns-lexicon providers.

PowerDNS (Debian pdns-server, SQLite backend) is a real authoritative server: certbroker
writes through lexicon's powerdns provider and its HTTP API, and Pebble's VA reads the
TXT records from it. Route 53 cannot run here, so moto in server mode stands in for the
AWS API (it serves no DNS: that Pebble skips validation and the propagation check is
off); the test checks the API calls certbroker made and that nothing is left behind.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import make_cli
from tests.support.dns_servers import PowerDnsServer, start_powerdns
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port


@pytest.fixture(scope="module")
def pdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDnsServer]:
    server = start_powerdns(tmp_path_factory.mktemp("pdns"), zones=["example.com"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pdns_pebble(
    tmp_path_factory: pytest.TempPathFactory, pdns: PowerDnsServer
) -> Iterator[PebbleServer]:
    server = start_pebble(
        tmp_path_factory.mktemp("pebble-pdns"), http_port=free_port(), dns_server=pdns.dns_address
    )
    try:
        yield server
    finally:
        server.stop()


def test_powerdns_through_lexicon_issues_and_cleans_up(
    tmp_path: Path, pdns_pebble: PebbleServer, pdns: PowerDnsServer
) -> None:
    cli = make_cli(tmp_path / "data", pdns_pebble)
    cli.env["CERTBROKER_DNS_CHECK_SERVERS"] = pdns.dns_address
    cli.env["CERTBROKER_DNS_RESOLVERS"] = pdns.dns_address
    cli.register()
    cli(
        "dns", "add", "pdns", "--provider", "powerdns", "--pdns-server", pdns.api_url,
        "--zone", "example.com", env={"LEXICON_POWERDNS_AUTH_TOKEN": pdns.api_key},
    )  # fmt: skip
    shown = cli.json("dns", "show", "pdns")
    assert shown["options"] == {"auth_token": "********", "pdns_server": pdns.api_url}
    assert pdns.api_key not in cli("dns", "list").stdout
    assert "DNS account pdns works" in cli("dns", "test", "pdns").stdout

    out = cli(
        "cert", "request", "pdns.example.com", "*.pdns.example.com", "--challenge", "dns-01",
        "--wait",
    )  # fmt: skip
    assert "certificate 1 issued" in out.stdout
    assert f"TXT records visible at {pdns.dns_address}" in out.stderr
    assert pdns.txt("_acme-challenge.pdns.example.com") == []

    # A wrong API key: named, refused before any order, nothing stored with it.
    cli(
        "dns", "add", "wrong", "--provider", "powerdns", "--pdns-server", pdns.api_url,
        "--auth-token", "not-the-key",
    )  # fmt: skip
    failed = cli("dns", "test", "wrong", "--zone", "example.com", check=False)
    assert failed.returncode == 1
    assert "not-the-key" not in failed.stderr
    assert "--auth-token" in failed.stderr


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A moto server with no hosted zones, recording to this test's tmp_path from empty.

    moto's backends and its recorder are one per process, shared by every moto server in it:
    zones another test left behind would take lexicon's look-up of example.com, so the state
    is reset. The recorder reads MOTO_RECORDER_FILEPATH only when moto.moto_api is first
    imported, which another test may have done already, so the live recorder is pointed at
    the file too; otherwise it writes to ./moto_recording, where an old recording would
    satisfy the assertions on its own.
    """
    recording = tmp_path / "moto-recording.jsonl"
    monkeypatch.setenv("MOTO_RECORDER_FILEPATH", str(recording))
    from moto.moto_api import recorder
    from moto.server import ThreadedMotoServer

    monkeypatch.setattr(recorder, "_location", str(recording))
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE_53", url)
    try:
        requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        requests.post(f"{url}/moto-api/recorder/reset-recording", timeout=10).raise_for_status()
        assert recording.read_text() == ""  # the server's recorder writes here
        yield url
    finally:
        recorder.stop_recording()  # a failed test must not leave later moto servers recording
        server.stop()


def _recorded(url: str) -> list[dict[str, Any]]:
    text = requests.get(f"{url}/moto-api/recorder/download-recording", timeout=10).text
    calls = []
    for line in text.splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        calls.append({"method": entry["method"], "url": entry["url"], "body": body})
    return calls


def test_route53_records_are_created_and_deleted_through_the_api(tmp_path: Path, moto: str) -> None:
    import boto3

    r53 = boto3.client(
        "route53", aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip
    zone_id = r53.create_hosted_zone(Name="example.com.", CallerReference="t")["HostedZone"]["Id"]
    with start_pebble(tmp_path / "pebble", http_port=free_port(), always_valid=True) as pebble:
        cli = make_cli(tmp_path / "data", pebble)
        cli.env["AWS_ENDPOINT_URL_ROUTE_53"] = os.environ["AWS_ENDPOINT_URL_ROUTE_53"]
        cli.env["CERTBROKER_DNS_CHECK_SERVERS"] = "off"  # moto serves no DNS
        cli.register()
        cli(
            "dns", "add", "aws", "--provider", "route53", "--zone", "example.com",
            env={
                "LEXICON_ROUTE53_AUTH_ACCESS_KEY": "testing",
                "LEXICON_ROUTE53_AUTH_ACCESS_SECRET": "testing-secret",
            },
        )  # fmt: skip
        requests.post(f"{moto}/moto-api/recorder/start-recording", timeout=10)
        out = cli("cert", "request", "r53.example.com", "--challenge", "dns-01", "--wait")
        requests.post(f"{moto}/moto-api/recorder/stop-recording", timeout=10)
    assert "certificate 1 issued" in out.stdout

    calls = _recorded(moto)
    rrsets = f"{moto}/2013-04-01{zone_id}/rrset"  # this run's server and zone only
    assert any(c["method"] == "GET" and c["url"].startswith(rrsets) for c in calls)  # listed
    changes = [c["body"] for c in calls if c["url"] == f"{rrsets}/"]
    creates = [b for b in changes if "<Action>CREATE</Action>" in b or "UPSERT" in b]
    deletes = [b for b in changes if "<Action>DELETE</Action>" in b]
    assert creates and all("_acme-challenge.r53.example.com" in b for b in creates)
    assert deletes and all("_acme-challenge.r53.example.com" in b for b in deletes)
    listed = r53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    assert [r for r in listed if r["Type"] == "TXT"] == []
