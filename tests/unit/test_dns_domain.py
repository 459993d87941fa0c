"""DNS-01 in the domain: record names, TXT values, zones, server lists, account names."""

from __future__ import annotations

import base64
import hashlib

import pytest

from certbroker.domain.dns import (
    DnsAccount,
    DnsAccountConfig,
    challenge_record_name,
    check_account_name,
    parse_servers,
    txt_value,
    zone_of,
)
from certbroker.domain.errors import UsageError
from tests.unit.conftest import NOW


def test_the_record_of_a_wildcard_is_its_base_names() -> None:
    assert challenge_record_name("www.example.com") == "_acme-challenge.www.example.com"
    assert challenge_record_name("*.example.com") == "_acme-challenge.example.com"
    assert challenge_record_name("Example.COM.") == "_acme-challenge.example.com"


def test_txt_value_is_unpadded_base64url_of_the_key_authorizations_sha256() -> None:
    key_auth = "token-1.thumbprint"
    digest = hashlib.sha256(key_auth.encode()).digest()
    assert txt_value(key_auth) == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert "=" not in txt_value(key_auth) and len(txt_value(key_auth)) == 43


def test_zone_of_takes_the_longest_zone_and_respects_label_boundaries() -> None:
    zones = ["example.com", "sub.example.com", "ample.com"]
    assert zone_of("_acme-challenge.www.sub.example.com", zones) == "sub.example.com"
    assert zone_of("_acme-challenge.example.com", zones) == "example.com"
    assert zone_of("example.com.", zones) == "example.com"
    assert zone_of("notexample.com", ["example.com"]) is None


def test_server_lists() -> None:
    assert parse_servers("127.0.0.1:5353, 10.0.0.1", "x") == (("127.0.0.1", 5353), ("10.0.0.1", 53))
    assert parse_servers("[::1]:53", "x") == (("::1", 53),)
    assert parse_servers("", "x") == ()
    with pytest.raises(UsageError, match=r"dns_resolvers: 'ns1.example.com' is not IP\[:PORT\]"):
        parse_servers("ns1.example.com", "dns_resolvers")
    with pytest.raises(UsageError, match="no valid port"):
        parse_servers("127.0.0.1:99999", "x")


def test_account_names() -> None:
    assert check_account_name("bind-primary.1") == "bind-primary.1"
    with pytest.raises(UsageError, match="reserved for manual"):
        check_account_name("Manual")
    with pytest.raises(UsageError, match="not usable"):
        check_account_name("has space")


def test_secrets_stay_out_of_json_and_repr() -> None:
    account = DnsAccount(
        id=1, name="cf", provider="cloudflare", settings={"auth_username": "me"},
        secret_names=("auth_token",), zones=("example.com",), created_at=NOW,
    )  # fmt: skip
    assert account.to_json()["options"] == {"auth_token": "********", "auth_username": "me"}
    config = DnsAccountConfig("cf", "cloudflare", {}, {"auth_token": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(config)
    assert config.options() == {"auth_token": "s3cr3t-value"}
