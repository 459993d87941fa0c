"""`certbroker client`: the token alone on the last line, never shown again, rotated;
the allow-list changed; mistakes named with exit code 2 and nothing stored."""

from __future__ import annotations

from tests.conftest import Cli


def test_client_commands_from_add_to_delete(offline_cli: Cli) -> None:
    cli = offline_cli
    out = cli(
        "client", "add", "gw1", "--allow", "gw1.example.com",
        "--allow", "*.branch.example.com", "--policy", "approve",
    ).stdout  # fmt: skip
    token = out.strip().splitlines()[-1]
    assert token.startswith("cbc_") and len(token) > 40
    shown = cli.json("client", "show", "gw1")
    assert shown["allow"] == ["gw1.example.com", "*.branch.example.com"]
    assert shown["policy"] == "approve" and shown["wildcard"] is False
    listed = cli("client", "list").stdout + cli("client", "list", "--json").stdout
    assert token not in listed and shown["token_prefix"] in listed
    assert token not in (cli.data_dir / "certbroker.db").read_bytes().decode("latin-1")

    refused = cli("client", "allow", "gw1", "--wildcard", "--remove", "*.branch.example.com",
                  check=False)  # fmt: skip
    assert refused.returncode == 2 and "--wildcard needs" in refused.stderr
    assert cli.json("client", "show", "gw1")["allow"] == shown["allow"]  # nothing changed
    cli("client", "allow", "gw1", "*.example.net", "--wildcard")
    assert cli.json("client", "show", "gw1")["wildcard"] is True

    rotated = cli("client", "rotate-token", "gw1").stdout.strip().splitlines()[-1]
    assert rotated.startswith("cbc_") and rotated != token
    cli("client", "disable", "gw1")
    assert cli.json("client", "show", "gw1")["enabled"] is False
    cli("client", "enable", "gw1")

    for args, message in [
        (("client", "add", "gw1"), "already exists"),
        (("client", "add", "bad name"), "client name"),
        (("client", "add", "x", "--allow", "http://x"), "name pattern"),
        (("client", "add", "y", "--policy", "maybe"), "unknown policy"),
        (("client", "show", "nobody"), "no client 'nobody'"),
        (("client", "allow", "gw1"), "say what to change"),
    ]:
        proc = cli(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    assert [c["name"] for c in cli.json("client", "list")] == ["gw1"]
    cli("client", "delete", "gw1")
    assert cli.json("client", "list") == []
