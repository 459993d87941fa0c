"""Prove the real-DNS-server harness (tests/support/dns_servers.py) works.

Independent of certbroker's code: if these fail, the problem is the harness or the
BIND/PowerDNS installation (scripts/ensure-test-deps.sh), not the broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.dns_servers import (
    BindServer,
    DnsServerStartupError,
    PowerDnsServer,
    start_bind,
    start_powerdns,
)

KEY = "certbroker-key"
NET_KEY = "net-key"
ALIAS_TARGET = "_acme-challenge.alias.example.net."


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    server = start_bind(
        tmp_path_factory.mktemp("bind"),
        zones={
            "example.com": [f"_acme-challenge.alias 60 IN CNAME {ALIAS_TARGET}"],
            "example.net": [],
        },
        keys={KEY: ["example.com"], NET_KEY: ["example.net"]},
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def powerdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDnsServer]:
    with start_powerdns(tmp_path_factory.mktemp("pdns"), ["example.com", "example.org"]) as server:
        yield server


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_bind_serves_its_zones(bind: BindServer) -> None:
    assert bind.address == f"127.0.0.1:{bind.port}"
    assert bind.is_running()
    assert bind.records("example.com", "NS") == ["ns1.example.com."]
    assert bind.records("ns1.example.net", "A") == ["127.0.0.1"]
    assert bind.txt("_acme-challenge.nothing.example.com") == []
    algorithm, secret = bind.keys[KEY]
    assert algorithm == "hmac-sha256"
    assert len(secret) == 44  # base64 of 32 bytes


def test_bind_signed_nsupdate_adds_txt(bind: BindServer) -> None:
    name = "_acme-challenge.www.example.com."
    result = bind.nsupdate(f'zone example.com.\nupdate add {name} 60 IN TXT "token-1"', KEY)
    assert result.returncode == 0, result.stderr
    assert bind.txt(name) == ["token-1"]

    key_file = bind.workdir / f"nsupdate-{KEY}.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_bind_wrong_secret_is_refused(bind: BindServer) -> None:
    name = "_acme-challenge.badsig.example.com."
    wrong = "A" * 43 + "="
    result = bind.nsupdate(
        f'zone example.com.\nupdate add {name} 60 IN TXT "nope"', KEY, secret=wrong
    )
    assert result.returncode != 0
    assert "BADSIG" in result.stderr
    assert bind.txt(name) == []


def test_bind_update_outside_the_keys_zone_is_refused(bind: BindServer) -> None:
    name = "_acme-challenge.example.net."
    result = bind.nsupdate(f'zone example.net.\nupdate add {name} 60 IN TXT "nope"', KEY)
    assert result.returncode != 0
    assert "REFUSED" in result.stderr
    assert bind.txt(name) == []


def test_bind_policy_allows_only_txt(bind: BindServer) -> None:
    result = bind.nsupdate("zone example.com.\nupdate add evil.example.com. 60 IN A 10.0.0.1", KEY)
    assert result.returncode != 0
    assert "REFUSED" in result.stderr
    assert bind.records("evil.example.com", "A") == []


def test_bind_cname_from_zone_lines_resolves(bind: BindServer) -> None:
    alias = "_acme-challenge.alias.example.com."
    assert bind.records(alias, "CNAME") == [ALIAS_TARGET]

    result = bind.nsupdate(
        f'zone example.net.\nupdate add {ALIAS_TARGET} 60 IN TXT "delegated"', NET_KEY
    )
    assert result.returncode == 0, result.stderr
    assert bind.txt(ALIAS_TARGET) == ["delegated"]
    # An authoritative-only named does not chase the CNAME into example.net (another zone),
    # even though it serves that zone too: the answer holds only the CNAME.
    assert bind.txt(alias) == []


def test_bind_stops_cleanly_and_reports_broken_zones(tmp_path: Path) -> None:
    server = start_bind(tmp_path / "ok", zones={"example.org": []}, keys={})
    with server:
        pid = server.pid
        assert server.records("example.org", "SOA")
    assert not server.is_running()
    assert _gone(pid)
    server.stop()  # idempotent

    with pytest.raises(DnsServerStartupError, match="not loaded due to errors") as info:
        start_bind(tmp_path / "broken", zones={"example.org": ["bad line here"]}, keys={})
    assert "example.org" in str(info.value)


def test_powerdns_api_patch_shows_in_txt(powerdns: PowerDnsServer) -> None:
    assert powerdns.dns_address == f"127.0.0.1:{powerdns.dns_port}"
    assert powerdns.records("example.org", "NS") == ["ns1.example.org."]
    name = "_acme-challenge.example.com."
    assert powerdns.txt(name) == []

    headers = {"X-API-Key": powerdns.api_key}
    rrset = {
        "name": name,
        "type": "TXT",
        "ttl": 60,
        "changetype": "REPLACE",
        "records": [{"content": '"tok-1"', "disabled": False}],
    }
    resp = requests.patch(
        f"{powerdns.api_url}/api/v1/servers/localhost/zones/example.com.",
        json={"rrsets": [rrset]},
        headers=headers,
        timeout=10,
    )
    assert resp.status_code == 204, resp.text
    assert powerdns.txt(name) == ["tok-1"]

    resp = requests.get(
        f"{powerdns.server_url}/zones/example.com.",
        headers={"X-API-Key": "wrong"},
        timeout=10,
    )
    assert resp.status_code == 401


def test_powerdns_stops_cleanly(tmp_path: Path) -> None:
    with start_powerdns(tmp_path, ["example.net"]) as server:
        pid = server.pid
        assert server.records("example.net", "SOA")
    assert not server.is_running()
    assert _gone(pid)
