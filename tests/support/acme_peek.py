"""Ask Pebble directly (signed POST-as-GET) what it knows, to check the broker's claims."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from acme import client, messages

from certbroker.crypto.jwk import jwk_for
from certbroker.crypto.keys import load_private_key
from tests.support.pebble import PebbleServer


def post_as_get(pebble: PebbleServer, account_uri: str, key_file: Path, url: str) -> Any:
    key = load_private_key(key_file.read_bytes())
    jwk, alg = jwk_for(key)
    net = client.ClientNetwork(key=jwk, alg=alg, verify_ssl=str(pebble.ca_bundle))  # type: ignore[arg-type]
    net.account = messages.RegistrationResource(uri=account_uri, body=messages.Registration())
    directory = requests.get(pebble.directory_url, verify=str(pebble.ca_bundle), timeout=10).json()
    return net.post(url, None, new_nonce_url=directory["newNonce"]).json()


def deactivate_authorizations(
    pebble: PebbleServer, account_uri: str, key_file: Path, order_url: str
) -> int:
    """Deactivate the authorizations of an order (RFC 8555 7.5.2), so the next order for
    the same names must be validated again: Pebble reuses a valid authorization now and
    then even when told not to. Returns how many it deactivated."""
    key = load_private_key(key_file.read_bytes())
    jwk, alg = jwk_for(key)
    net = client.ClientNetwork(key=jwk, alg=alg, verify_ssl=str(pebble.ca_bundle))  # type: ignore[arg-type]
    net.account = messages.RegistrationResource(uri=account_uri, body=messages.Registration())
    directory = requests.get(pebble.directory_url, verify=str(pebble.ca_bundle), timeout=10).json()
    nonce = directory["newNonce"]
    order = net.post(order_url, None, new_nonce_url=nonce).json()
    for url in order["authorizations"]:
        net.post(url, messages.UpdateAuthorization(status=messages.STATUS_DEACTIVATED),
                 new_nonce_url=nonce)  # fmt: skip
    return len(order["authorizations"])
