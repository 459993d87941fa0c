"""DNS accounts from the command line: every wrong input is answered with one clear line
and a non-zero exit, nothing half-stored; secrets never leave the store in clear."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from tests.conftest import Cli

SECRET = base64.b64encode(secrets.token_bytes(32)).decode()


def rfc2136(cli: Cli, name: str, *extra: str, check: bool = True, secret: str = SECRET) -> str:
    proc = cli(
        "dns", "add", name, "--provider", "rfc2136", "--server", "127.0.0.1:5353",
        "--tsig-key-name", "certbroker-key", *extra,
        env={"CERTBROKER_DNS_TSIG_SECRET": secret}, check=check,
    )  # fmt: skip
    return proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "nosuchdns"], "no DNS provider 'nosuchdns'"),
        (["--provider", "rfc2136"], "provider rfc2136 needs --server, --tsig-key-name"),
        (
            ["--provider", "rfc2136", "--server", "127.0.0.1:70000", "--tsig-key-name", "k",
             "--tsig-secret", SECRET],
            "has no valid port",
        ),
        (
            ["--provider", "rfc2136", "--server", "ns1", "--tsig-key-name", "k",
             "--tsig-secret", "not base64!"],
            "--tsig-secret is not base64",
        ),
        (
            ["--provider", "rfc2136", "--server", "ns1", "--tsig-key-name", "k",
             "--tsig-secret", SECRET, "--tsig-algorithm", "hmac-md5"],
            "--tsig-algorithm 'hmac-md5' is not supported",
        ),
        (
            ["--provider", "rfc2136", "--server", "ns1", "--tsig-key-name", "k",
             "--tsig-secret", SECRET, "--auth-token", "x"],
            "provider rfc2136 has no option --auth-token",
        ),
        (["--provider", "cloudflare", "--no-such-option", "x"], "has no option --no-such-option"),
        (["--provider", "cloudflare"], "provider cloudflare needs its credentials"),
        (["--provider", "cloudflare", "--auth-token"], "option --auth-token needs a value"),
        (
            ["--provider", "rfc2136", "--server", "ns1", "--tsig-key-name", "k",
             "--tsig-secret", SECRET, "--zone", "not a zone"],
            "'not a zone'",
        ),
    ],
)  # fmt: skip
def test_dns_add_refuses_bad_input(offline_cli: Cli, args: list[str], message: str) -> None:
    proc = offline_cli("dns", "add", "acct", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line
    assert offline_cli.json("dns", "list") == []


def test_names_zones_and_deletion(offline_cli: Cli) -> None:
    rfc2136(offline_cli, "primary", "--zone", "example.com")
    stderr = rfc2136(offline_cli, "primary", check=False)
    assert "a DNS account named 'primary' already exists" in stderr
    stderr = rfc2136(offline_cli, "other", "--zone", "example.com", check=False)
    assert "zone example.com already has a default DNS account ('primary')" in stderr
    assert "reserved for manual" in rfc2136(offline_cli, "manual", check=False)
    assert [a["name"] for a in offline_cli.json("dns", "list")] == ["primary"]

    rfc2136(offline_cli, "other")
    offline_cli("dns", "zones", "primary", "--remove", "example.com")
    assert (
        "other: sub.example.com"
        in offline_cli("dns", "zones", "other", "--add", "Sub.Example.COM.").stdout
    )
    bad = offline_cli("dns", "zones", "other", "--remove", "example.org", check=False)
    assert bad.returncode == 2 and "is not the default of example.org" in bad.stderr
    assert "DNS account other deleted" in offline_cli("dns", "delete", "other").stdout
    missing = offline_cli("dns", "show", "other", check=False)
    assert missing.returncode == 2 and "no DNS account 'other'" in missing.stderr


def test_requests_name_what_is_missing(cli: Cli) -> None:
    cli.register()
    proc = cli("cert", "request", "www.example.com", "--challenge", "dns-01", check=False)
    assert proc.returncode == 2
    assert "no DNS account for www.example.com" in proc.stderr
    assert "--dns-account" in proc.stderr
    proc = cli(
        "cert", "request", "www.example.com", "--challenge", "dns-01", "--dns-account", "nope",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "no DNS account 'nope'" in proc.stderr
    proc = cli("cert", "request", "www.example.com", "--dns-account", "manual", check=False)
    assert proc.returncode == 2
    assert "--dns-account is only used with --challenge dns-01" in proc.stderr
    proc = cli("cert", "request", "*.example.com", check=False)
    assert proc.returncode == 2 and "use --challenge dns-01" in proc.stderr
    assert cli.json("cert", "list") == []

    # An account in use is not deleted from under its certificates.
    rfc2136(cli, "primary")
    cli("cert", "request", "a.example.com", "--challenge", "dns-01", "--dns-account", "primary")
    refused = cli("dns", "delete", "primary", check=False)
    assert refused.returncode == 2 and "is chosen by 1 certificate" in refused.stderr
    not_manual = cli("cert", "verify", "1", check=False)
    assert not_manual.returncode == 2
    assert "does not use manual DNS validation" in not_manual.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CERTBROKER_DNS_RESOLVERS": "dns.google"}, "CERTBROKER_DNS_RESOLVERS: dns_resolvers"),
        ({"CERTBROKER_DNS_CHECK_SERVERS": "127.0.0.1:0"}, "has no valid port"),
        ({"CERTBROKER_DNS_PROPAGATION_TIMEOUT": "0"}, "dns_propagation_timeout must be"),
    ],
)
def test_bad_dns_settings_are_named(offline_cli: Cli, env: dict[str, str], message: str) -> None:
    proc = offline_cli("dns", "list", env=env, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_secrets_are_sealed_masked_and_kept_out_of_logs(offline_cli: Cli) -> None:
    token = "cf-token-" + secrets.token_hex(16)
    offline_cli(
        "--log-level", "debug", "dns", "add", "cf", "--provider", "cloudflare",
        "--auth-username", "ops@example.com", "--auth-token", token,
    )  # fmt: skip
    stderr = rfc2136(offline_cli, "bind")
    shown = offline_cli.json("dns", "show", "cf")
    assert shown["options"] == {"auth_token": "********", "auth_username": "ops@example.com"}
    assert offline_cli.json("dns", "show", "bind")["options"]["tsig_secret"] == "********"
    outputs = "".join(p.stdout + p.stderr for p in offline_cli.history) + stderr
    assert token not in outputs and SECRET not in outputs
    for path in Path(offline_cli.data_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data, path
            assert SECRET.encode() not in data, path
            assert base64.b64decode(SECRET) not in data, path
