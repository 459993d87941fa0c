"""`cert request --from FILE`: many certificates from one command, against a real Pebble."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from tests.conftest import Cli
from tests.integration.test_issuance import exported


def _names_of(cert_pem: bytes) -> list[str]:
    leaf = x509.load_pem_x509_certificate(cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def test_a_file_of_certificates_is_issued_in_one_run(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    batch = tmp_path / "hosts.txt"
    batch.write_text(
        "# gateways\n"
        "gw1.batch.example.com\n"
        "\n"
        "gw2.batch.example.com, vpn.gw2.batch.example.com   # two names, one certificate\n"
        "lb.batch.example.com www.lb.batch.example.com\n"
        "dev1.batch.example.com\n"
    )
    done = cli("cert", "request", "--from", str(batch), "--key-type", "rsa2048", "--wait")
    assert "obtaining 4 certificates" in done.stdout
    assert done.stdout.count(" issued for ") == 4
    listed = cli.json("cert", "list")
    assert sorted(c["names"][0] for c in listed) == [
        "dev1.batch.example.com",
        "gw1.batch.example.com",
        "gw2.batch.example.com",
        "lb.batch.example.com",
    ]
    assert {c["status"] for c in listed} == {"valid"}
    by_cn = {c["names"][0]: c["id"] for c in listed}
    for cert_id in by_cn.values():  # the options apply to each
        assert cli.json("cert", "show", str(cert_id))["key_type"] == "rsa2048"
    cert_pem, _, _ = exported(cli, by_cn["gw2.batch.example.com"], tmp_path)
    assert _names_of(cert_pem) == ["gw2.batch.example.com", "vpn.gw2.batch.example.com"]


def test_standard_input_and_json(cli: Cli) -> None:
    cli.register()
    result = subprocess.run(
        [sys.executable, "-m", "certbroker", "cert", "request", "--from", "-", "--wait", "--json"],
        input="a.stdin.example.com\nb.stdin.example.com\n",
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert [d["names"] for d in details] == [["a.stdin.example.com"], ["b.stdin.example.com"]]
    assert {d["status"] for d in details} == {"valid"}


def test_without_wait_they_are_queued_for_serve(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    batch = tmp_path / "hosts.txt"
    batch.write_text("q1.batch.example.com\nq2.batch.example.com\nq3.batch.example.com\n")
    queued = cli("cert", "request", "--from", str(batch))
    assert "3 certificates queued (IDs 1-3)" in queued.stdout
    assert {c["status"] for c in cli.json("cert", "list")} == {"pending"}
    resumed = cli("cert", "resume", "2")
    assert "issued" in resumed.stdout
    statuses = {c["id"]: c["status"] for c in cli.json("cert", "list")}
    assert statuses == {1: "pending", 2: "valid", 3: "pending"}


def test_a_bad_line_is_named_and_nothing_is_stored(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    batch = tmp_path / "hosts.txt"
    batch.write_text("ok1.batch.example.com\nok2.batch.example.com\nbad_name..example.com\n")
    refused = cli("cert", "request", "--from", str(batch), "--wait", check=False)
    assert refused.returncode == 2
    assert f"--from {batch}, line 3:" in refused.stderr
    assert "bad_name..example.com" in refused.stderr
    assert cli.json("cert", "list") == []


def test_batch_files_that_are_refused(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    cases = {
        "twice.txt": (
            "a.example.com\nb.example.com\nB.example.com.\n",
            "line 3: the same names as line 2",
        ),
        "empty.txt": ("# nothing yet\n\n", "names no certificate"),
    }
    for file_name, (text, message) in cases.items():
        path = tmp_path / file_name
        path.write_text(text)
        refused = cli("cert", "request", "--from", str(path), check=False)
        assert refused.returncode == 2, file_name
        assert message in refused.stderr, refused.stderr
    missing = cli("cert", "request", "--from", str(tmp_path / "nope.txt"), check=False)
    assert missing.returncode == 2
    assert f"cannot read --from {tmp_path / 'nope.txt'}" in missing.stderr
    both = cli("cert", "request", "x.example.com", "--from", str(path), check=False)
    assert both.returncode == 2 and "DNS names, or --from FILE" in both.stderr
    neither = cli("cert", "request", check=False)
    assert neither.returncode == 2 and "DNS names, or --from FILE" in neither.stderr
    key = tmp_path / "key.pem"
    key.write_text("irrelevant")
    with_key = cli(
        "cert", "request", "--from", str(path), "--key-policy", "imported",
        "--key-file", str(key), check=False,
    )  # fmt: skip
    assert with_key.returncode == 2 and "does not go with --from" in with_key.stderr
    assert cli.json("cert", "list") == []
