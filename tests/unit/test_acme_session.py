"""The ACME client reads proxies and CA bundles from the environment once per host."""

from __future__ import annotations

import pytest

from certbroker.ca.acme_client import _Session


def test_proxy_variables_are_honoured_per_host_and_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "ca.internal")
    session = _Session()
    via_proxy = session.merge_environment_settings(
        "https://acme.example/directory", {}, False, True, None
    )
    assert via_proxy["proxies"].get("https") == "http://proxy.internal:3128"
    direct = session.merge_environment_settings("https://ca.internal/dir", {}, False, True, None)
    assert "https" not in direct["proxies"]
    # Read once per host: later requests to that host keep what was read first.
    monkeypatch.setenv("HTTPS_PROXY", "http://other:8080")
    again = session.merge_environment_settings(
        "https://acme.example/order/1", {}, False, True, None
    )
    assert again["proxies"].get("https") == "http://proxy.internal:3128"
    again["proxies"]["https"] = "changed by a caller"  # a copy: the cache is not touched
    assert (
        session.merge_environment_settings("https://acme.example/x", {}, False, True, None)[
            "proxies"
        ]["https"]
        == "http://proxy.internal:3128"
    )
    # A new client (a new process, a new account) reads the environment again.
    assert (
        _Session()
        .merge_environment_settings("https://acme.example/directory", {}, False, True, None)[
            "proxies"
        ]
        .get("https")
        == "http://other:8080"
    )


def test_a_ca_bundle_from_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/corp/ca.pem")
    settings = _Session().merge_environment_settings(
        "https://acme.example/d", {}, False, True, None
    )
    assert settings["verify"] == "/etc/corp/ca.pem"
