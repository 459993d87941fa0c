"""Fixtures several integration modules share: the browser of the console tests, and
BIND 9 with a Pebble whose VA reads its records (DNS-01)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import Cli, make_cli
from tests.support.ari_proxy import AriProxy
from tests.support.browser import launch
from tests.support.dns_servers import BindServer, start_bind
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port
from tests.support.smtp import SmtpServer, start_smtp

# BIND's TSIG keys: each may only write TXT records in its own zone.
COM_KEY = "certbroker-com"
NET_KEY = "certbroker-net"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, one per test session (per xdist worker)."""
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    """example.com and example.net as separate zones with separate keys;
    _acme-challenge.alias.example.com is a CNAME into example.net."""
    server = start_bind(
        tmp_path_factory.mktemp("bind"),
        zones={
            "example.com": ["_acme-challenge.alias 60 IN CNAME _acme-challenge.alias.example.net."],
            "example.net": [],
        },
        keys={COM_KEY: ["example.com"], NET_KEY: ["example.net"]},
        recursion=True,  # so Pebble's VA, like a resolver, follows the CNAME into example.net
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dns_pebble(
    tmp_path_factory: pytest.TempPathFactory, bind: BindServer
) -> Iterator[PebbleServer]:
    """Pebble whose VA reads DNS (TXT records, CNAMEs) from `bind`."""
    server = start_pebble(
        tmp_path_factory.mktemp("pebble-dns"),
        http_port=free_port(),
        dns_server=bind.address,
        # Every order gets fresh authorizations (Pebble reuses half of them by default), so
        # each test validates every name it asks for.
        env={"PEBBLE_AUTHZREUSE": "0"},
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ari(pebble: PebbleServer) -> Iterator[AriProxy]:
    """A proxy in front of Pebble that adds ARI and can distort answers (ari_proxy.py)."""
    now = datetime.now(UTC)
    proxy = AriProxy(pebble, (now + timedelta(days=10), now + timedelta(days=11))).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def ari_cli(ari: AriProxy, pebble: PebbleServer, tmp_path: Path) -> Cli:
    """A CLI with account `main` registered through `ari`."""
    cli = make_cli(tmp_path / "data", pebble)
    cli(
        "account", "register", "--directory", ari.directory_url, "--email",
        "ari@example.com", "--agree-tos", "--ca-bundle", str(pebble.ca_bundle),
        "--name", "main",
    )  # fmt: skip
    return cli


def add_account(
    cli: Cli, bind: BindServer, name: str, key: str, zone: str, secret: str | None = None
) -> None:
    """`certbroker dns add NAME --provider rfc2136` for one of `bind`'s TSIG keys."""
    cli(
        "dns", "add", name, "--provider", "rfc2136", "--server", bind.address,
        "--tsig-key-name", key, "--zone", zone,
        env={"CERTBROKER_DNS_TSIG_SECRET": secret or bind.keys[key][1]},
    )  # fmt: skip


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd, STARTTLS, one log-in) for the mail tests."""
    server = start_smtp(tmp_path_factory.mktemp("smtp"))
    try:
        yield server
    finally:
        server.stop()
