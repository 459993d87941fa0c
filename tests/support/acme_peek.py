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
