"""ACME accounts against a real Pebble: register, EAB, update, rollover, deactivate, import."""

from __future__ import annotations

import base64
import json
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certbroker.crypto.keys import load_private_key
from tests.conftest import Cli, make_cli
from tests.support.acme_peek import post_as_get
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port

EAB_KID = "kid-1"
EAB_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def _account_at_pebble(pebble: PebbleServer, uri: str, key_file: Path) -> dict[str, object]:
    """What Pebble itself says about the account."""
    data: dict[str, object] = post_as_get(pebble, uri, key_file, uri)
    return data


def test_register_show_list(cli: Cli, pebble: PebbleServer) -> None:
    account = cli.register("main", "--email", "second@example.com", "--key-type", "ec-p384")
    assert account["status"] == "valid"
    assert account["uri"].startswith(pebble.directory_url.rsplit("/", 1)[0])
    assert account["emails"] == ["main@example.com", "second@example.com"]
    assert account["key_type"] == "ec-p384"
    listed = cli.json("account", "list")
    assert [a["name"] for a in listed] == ["main"]
    shown = cli.json("account", "show", "main", "--refresh")
    assert shown["status"] == "valid"
    assert "PRIVATE" not in cli("account", "show", "main").stdout


def test_update_changes_contacts_at_the_ca(cli: Cli, pebble: PebbleServer, tmp_path: Path) -> None:
    account = cli.register()
    cli("account", "update", "main", "--email", "new@example.com")
    assert cli.json("account", "show", "main")["emails"] == ["new@example.com"]
    key_file = tmp_path / "k.pem"
    cli("account", "export-key", "main", "--out", str(key_file))
    at_ca = _account_at_pebble(pebble, account["uri"], key_file)
    assert at_ca["contact"] == ["mailto:new@example.com"]


def test_rollover_then_issue_with_the_new_key(
    cli: Cli, pebble: PebbleServer, tmp_path: Path
) -> None:
    account = cli.register()
    old = tmp_path / "old.pem"
    cli("account", "export-key", "main", "--out", str(old))
    cli("account", "rollover", "main", "--key-type", "rsa2048")
    new = tmp_path / "new.pem"
    cli("account", "export-key", "main", "--out", str(new))
    old_pub = (
        load_private_key(old.read_bytes())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    new_key = load_private_key(new.read_bytes())
    assert (
        new_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        != old_pub
    )
    assert cli.json("account", "show", "main")["key_type"] == "rsa2048"
    # The CA now knows the account by the new key, and the old key no longer works.
    assert _account_at_pebble(pebble, account["uri"], new)["status"] == "valid"
    with pytest.raises(Exception, match=r"unauthorized|accountDoesNotExist|malformed"):
        _account_at_pebble(pebble, account["uri"], old)
    details = cli.json("cert", "request", "rolled.example.com", "--wait")
    assert details["status"] == "valid"


def test_deactivate_then_requests_are_refused(cli: Cli) -> None:
    cli.register()
    refused = cli("account", "deactivate", "main", check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    cli("account", "deactivate", "main", "--yes")
    assert cli.json("account", "show", "main")["status"] == "deactivated"
    result = cli("cert", "request", "after.example.com", "--account", "main", "--wait", check=False)
    assert result.returncode == 2
    assert "deactivated" in result.stderr
    assert cli.json("cert", "list") == []


def test_delete_forgets_here_and_import_finds_it_again(
    cli: Cli, pebble: PebbleServer, tmp_path: Path
) -> None:
    account = cli.register()
    for fmt in ("pem", "jwk"):
        key_file = tmp_path / f"account.{fmt}"
        cli("account", "export-key", "main", "--out", str(key_file), "--format", fmt)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    json.loads((tmp_path / "account.jwk").read_text())  # a JWK is JSON
    out = cli("account", "delete", "main")
    assert "still active at the CA" in out.stdout
    assert cli.json("account", "list") == []
    # A fresh broker elsewhere adopts the account from its JWK key.
    other = make_cli(tmp_path / "other", pebble)
    other(
        "account",
        "import",
        "--key-file",
        str(tmp_path / "account.jwk"),
        "--directory",
        pebble.directory_url,
        "--ca-bundle",
        str(pebble.ca_bundle),
        "--name",
        "adopted",
    )
    adopted = other.json("account", "show", "adopted")
    assert adopted["uri"] == account["uri"]
    assert adopted["emails"] == ["main@example.com"]
    assert other.json("cert", "request", "adopted.example.com", "--wait")["status"] == "valid"


def test_import_of_an_unknown_key_is_refused(
    cli: Cli, pebble: PebbleServer, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_file = tmp_path / "stranger.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = cli(
        "account",
        "import",
        "--key-file",
        str(key_file),
        "--directory",
        pebble.directory_url,
        "--ca-bundle",
        str(pebble.ca_bundle),
        check=False,
    )
    assert result.returncode == 2
    assert "no account for this key" in result.stderr
    assert cli.json("account", "list") == []


@pytest.fixture(scope="module")
def eab_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    server = start_pebble(
        tmp_path_factory.mktemp("pebble-eab"),
        http_port=free_port(),
        eab_required=True,
        eab_keys={EAB_KID: EAB_KEY},
    )
    try:
        yield server
    finally:
        server.stop()


def test_eab_registration(eab_pebble: PebbleServer, tmp_path: Path) -> None:
    cli = make_cli(tmp_path / "data", eab_pebble)
    base = [
        "account",
        "register",
        "--directory",
        eab_pebble.directory_url,
        "--email",
        "eab@example.com",
        "--agree-tos",
        "--ca-bundle",
        str(eab_pebble.ca_bundle),
    ]
    refused = cli(*base, check=False)
    assert refused.returncode == 2
    assert "external account binding" in refused.stderr and "--eab-kid" in refused.stderr
    assert cli.json("account", "list") == []
    wrong = cli(
        *base,
        "--eab-kid",
        EAB_KID,
        "--eab-hmac-key",
        base64.urlsafe_b64encode(b"x" * 32).rstrip(b"=").decode(),
        check=False,
    )
    assert wrong.returncode == 1
    assert (
        "externalAccountRequired" in wrong.stderr
        or "unauthorized" in wrong.stderr
        or ("malformed" in wrong.stderr)
    )
    cli(*base, "--eab-kid", EAB_KID, "--eab-hmac-key", EAB_KEY, "--name", "bound")
    account = cli.json("account", "show", "bound")
    assert account["eab_kid"] == EAB_KID and account["status"] == "valid"
    assert cli.json("cert", "request", "eab.example.com", "--wait")["status"] == "valid"
