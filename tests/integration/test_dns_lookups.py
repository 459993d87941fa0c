"""The DNS lookups of DNS-01 against a real BIND: CNAME chains, the zone's authoritative
servers found through a resolver, and the visibility check's answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from certbroker.dns.propagation import DnsLookups
from certbroker.domain.errors import TransientError
from tests.support.dns_servers import BindServer, start_bind

KEY = "lookups-key"


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    server = start_bind(
        tmp_path_factory.mktemp("bind-lookups"),
        zones={
            "example.com": [
                "ns2 60 IN A 192.0.2.53",
                "@ 60 IN NS ns2.example.com.",
                "_acme-challenge.one 60 IN CNAME _acme-challenge.two.example.com.",
                "_acme-challenge.two 60 IN CNAME _acme-challenge.final.example.org.",
                "_acme-challenge.loop 60 IN CNAME _acme-challenge.loop.example.com.",
            ],
            "example.org": [],
        },
        keys={KEY: ["example.com", "example.org"]},
    )
    try:
        yield server
    finally:
        server.stop()


def test_cname_chains_are_followed_to_their_end(bind: BindServer) -> None:
    lookups = DnsLookups([("127.0.0.1", bind.port)])
    assert lookups.cname_target("_acme-challenge.one.example.com") == (
        "_acme-challenge.final.example.org"
    )
    assert lookups.cname_target("_acme-challenge.plain.example.com") == (
        "_acme-challenge.plain.example.com"
    )
    with pytest.raises(TransientError, match="loop"):
        lookups.cname_target("_acme-challenge.loop.example.com")


def test_the_authoritative_servers_come_from_the_zones_ns_records(bind: BindServer) -> None:
    lookups = DnsLookups([("127.0.0.1", bind.port)])
    servers = lookups.authoritative_servers("_acme-challenge.www.example.com")
    assert sorted(servers) == [("127.0.0.1", 53), ("192.0.2.53", 53)]


def test_the_check_sees_values_at_once_and_names_what_is_missing(bind: BindServer) -> None:
    lookups = DnsLookups()
    server = ("127.0.0.1", bind.port)
    name = "_acme-challenge.check.example.com"
    done = bind.nsupdate(
        f'update add {name}. 60 IN TXT "v1"\nupdate add {name}. 60 IN TXT "v2"\n', KEY
    )
    assert done.returncode == 0, done.stderr
    took = lookups.wait_visible([(server, name, "v1"), (server, name, "v2")], timeout=5)
    assert took < 5
    pauses: list[None] = []
    with pytest.raises(TransientError) as missing:
        lookups.wait_visible(
            [(server, name, "v1"), (server, name, "v3")], 0.3, lambda: pauses.append(None)
        )
    assert pauses  # an order renews its lease there while it waits
    assert f"{name} = 'v3' is not visible at 127.0.0.1:{bind.port}" in str(missing.value)
    assert "it answers: 2 TXT value(s)" in str(missing.value)
