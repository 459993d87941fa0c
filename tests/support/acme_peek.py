"""Ask Pebble directly (signed POST-as-GET) what it knows, to check the broker's claims."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from acme import client, messages

from certbroker.crypto.jwk import jwk_for
from certbroker.crypto.keys import load_private_key
from tests.support.pebble import PebbleServer

if TYPE_CHECKING:
    from tests.conftest import Cli


def _signer(pebble: PebbleServer, account_uri: str, key_file: Path) -> tuple[Any, str]:
    """A client signing as the account (its key exported to `key_file`), and the URL
    it takes nonces from."""
    key = load_private_key(key_file.read_bytes())
    jwk, alg = jwk_for(key)
    net = client.ClientNetwork(key=jwk, alg=alg, verify_ssl=str(pebble.ca_bundle))  # type: ignore[arg-type]
    net.account = messages.RegistrationResource(uri=account_uri, body=messages.Registration())
    directory = requests.get(pebble.directory_url, verify=str(pebble.ca_bundle), timeout=10).json()
    return net, str(directory["newNonce"])


def _post(net: Any, nonce_url: str, url: str, body: Any = None) -> requests.Response:
    """A signed POST (POST-as-GET without a body). Pebble rejects 5 % of good nonces and
    the acme client retries only once, so a test polling Pebble tries up to five times."""
    for _ in range(5):
        try:
            response: requests.Response = net.post(url, body, new_nonce_url=nonce_url)
            return response
        except messages.Error as error:
            if error.code != "badNonce":
                raise
    raise AssertionError(f"Pebble refused five nonces in a row for {url}")


def post_as_get(pebble: PebbleServer, account_uri: str, key_file: Path, url: str) -> Any:
    net, nonce_url = _signer(pebble, account_uri, key_file)
    return _post(net, nonce_url, url).json()


def deactivate_authorizations(
    pebble: PebbleServer, account_uri: str, key_file: Path, order_url: str
) -> int:
    """Deactivate the authorizations of an order (RFC 8555 7.5.2), so the next order for
    the same names must be validated again: Pebble reuses a valid authorization now and
    then even when told not to. Returns how many it deactivated."""
    net, nonce_url = _signer(pebble, account_uri, key_file)
    order = _post(net, nonce_url, order_url).json()
    deactivate = messages.UpdateAuthorization(status=messages.STATUS_DEACTIVATED)
    for url in order["authorizations"]:
        _post(net, nonce_url, url, deactivate)
    return len(order["authorizations"])


@dataclass
class CaOrders:
    """The orders one of the broker's accounts has at Pebble, as Pebble lists them (its
    `orders` URL, RFC 8555 7.1.2.1): to check that something was, or was not, ordered."""

    pebble: PebbleServer
    account_uri: str
    key_file: Path

    @classmethod
    def of(cls, cli: Cli, key_file: Path, account: str = "main") -> CaOrders:
        """Export the account's key (`account export-key`) and find its URI."""
        assert cli.pebble is not None
        cli("account", "export-key", account, "--out", str(key_file))
        [uri] = [a["uri"] for a in cli.json("account", "list") if a["name"] == account]
        return cls(cli.pebble, uri, key_file)

    def urls(self) -> list[str]:
        """Every order's URL, oldest first, across all pages (Pebble shows 3 a page by
        default and links the next with `Link: rel="next"`). Pebble leaves out the
        orders that are invalid (failed validation, or expired) when it lists them."""
        net, nonce_url = _signer(self.pebble, self.account_uri, self.key_file)
        found: list[str] = []
        url: str | None = _post(net, nonce_url, self.account_uri).json()["orders"]
        seen: set[str] = set()
        while url is not None:
            assert url not in seen, f"Pebble's order pages loop at {url}"
            seen.add(url)
            page = _post(net, nonce_url, url)
            found += page.json()["orders"]
            url = page.links.get("next", {}).get("url")
        return found

    def count(self) -> int:
        return len(self.urls())
