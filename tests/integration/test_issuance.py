"""HTTP-01 issuance end to end: the real CLI, the real responder, a real Pebble."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from certbroker.crypto.keys import key_matches_certificate, key_type_of, load_private_key
from tests.conftest import Cli
from tests.support.pebble import PebbleServer


def verify_chain(pebble: PebbleServer, leaf_pem: bytes, chain_pem: bytes, name: str) -> None:
    """The leaf chains to Pebble's root through the intermediates the broker stored."""
    root = x509.load_pem_x509_certificate(pebble.roots_pem())
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    intermediates = x509.load_pem_x509_certificates(chain_pem)
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .max_chain_depth(4)
        .build_server_verifier(x509.DNSName(name))
    )
    chain = verifier.verify(leaf, intermediates)
    assert chain[-1] == root


def exported(cli: Cli, cert_id: int, tmp_path: Path) -> tuple[bytes, bytes, bytes]:
    out = tmp_path / f"pem-{cert_id}"
    cli("cert", "export", str(cert_id), "--format", "pem", "--out", str(out))
    return (
        (out / "cert.pem").read_bytes(),
        (out / "chain.pem").read_bytes(),
        (out / "privkey.pem").read_bytes(),
    )


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa2048", "rsa3072", "rsa4096"])
@pytest.mark.parametrize("count", [1, 3])
def test_issue_with_each_key_type(
    cli: Cli, pebble: PebbleServer, tmp_path: Path, key_type: str, count: int
) -> None:
    cli.register()
    names = [f"n{i}-{key_type}-{count}.example.com" for i in range(count)]
    details = cli.json("cert", "request", *names, "--key-type", key_type, "--wait")
    assert details["status"] == "valid"
    assert details["names"] == names
    assert details["key_type"] == key_type
    cert_pem, chain_pem, key_pem = exported(cli, details["id"], tmp_path)
    leaf = x509.load_pem_x509_certificate(cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    key = load_private_key(key_pem)
    assert key_type_of(key).value == key_type
    assert key_matches_certificate(key, leaf)
    verify_chain(pebble, cert_pem, chain_pem, names[0])
    assert details["serial"] == format(leaf.serial_number, "x")
    assert pebble.cert_status(leaf.serial_number)["Status"] == "Valid"


def test_show_and_list_describe_the_certificate(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    cli(
        "cert",
        "request",
        "show.example.com",
        "www.show.example.com",
        "--wait",
        "--subject-org",
        "Example Ltd",
        "--subject-country",
        "de",
    )
    listed = cli.json("cert", "list")
    assert [(c["id"], c["names"], c["status"]) for c in listed] == [
        (1, ["show.example.com", "www.show.example.com"], "valid")
    ]
    assert listed[0]["not_after"]
    shown = cli.json("cert", "show", "1")
    for key in ("serial", "issuer", "fingerprint_sha256", "order_url", "not_before", "days_left"):
        assert shown[key], key
    assert shown["account"] == "main"
    # Stored and sent in the CSR; Pebble, like Let's Encrypt, keeps only the CN.
    assert shown["subject"] == {"org": "Example Ltd", "country": "DE"}
    (attempt,) = shown["attempts"]
    assert attempt["state"] == "valid"
    # --wait works on the order at once: queued and started together, then finished.
    assert attempt["created_at"] == attempt["started_at"] <= attempt["finished_at"]
    text = cli("cert", "show", "1").stdout
    assert "show.example.com" in text and shown["serial"] in text
    started = attempt["started_at"][:19].replace("T", " ")
    assert f"#{attempt['id']} valid: queued {started}, started {started}, finished" in text
    cert_pem, _, _ = exported(cli, 1, tmp_path)
    leaf = x509.load_pem_x509_certificate(cert_pem)
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "show.example.com"
    )
    assert cli.json("cert", "list", "--status", "failed") == []
    assert len(cli.json("cert", "list", "--expiring-within", "100000")) == 1
    header, row = cli("cert", "list").stdout.splitlines()
    assert header.split() == ["ID", "NAMES", "STATUS", "NOT", "AFTER", "DAYS", "LEFT", "ACCOUNT"]
    # Every name in full, one line per certificate, in the header's columns.
    assert row.startswith("1   show.example.com, www.show.example.com  valid")
    assert row[header.index("NOT AFTER") :].startswith(listed[0]["not_after"][:10])
    assert row.endswith("main")
    assert cli("cert", "list", "--status", "failed").stdout == "no certificates\n"


def test_revoke_is_confirmed_by_the_ca(cli: Cli, pebble: PebbleServer, tmp_path: Path) -> None:
    cli.register()
    cli("cert", "request", "revoke.example.com", "--wait")
    cert_pem, _, _ = exported(cli, 1, tmp_path)
    serial = x509.load_pem_x509_certificate(cert_pem).serial_number
    out = cli("cert", "revoke", "1", "--reason", "keyCompromise")
    assert "revoked" in out.stdout
    status = pebble.cert_status(serial)
    assert status["Status"] == "Revoked"
    assert status.get("Reason") == 1
    assert cli.json("cert", "show", "1")["status"] == "revoked"
    again = cli("cert", "revoke", "1", check=False)
    assert again.returncode == 2
    assert "already revoked" in again.stderr


def test_delete_forgets_here_only(cli: Cli, pebble: PebbleServer, tmp_path: Path) -> None:
    cli.register()
    cli("cert", "request", "delete.example.com", "--wait")
    cert_pem, _, _ = exported(cli, 1, tmp_path)
    out = cli("cert", "delete", "1")
    assert "stays valid at the CA" in out.stdout
    assert cli.json("cert", "list") == []
    serial = x509.load_pem_x509_certificate(cert_pem).serial_number
    assert pebble.cert_status(serial)["Status"] == "Valid"
    missing = cli("cert", "show", "1", check=False)
    assert missing.returncode == 2 and "no certificate with ID 1" in missing.stderr


def test_imported_key_is_used(cli: Cli, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    cli.register()
    key = ec.generate_private_key(ec.SECP384R1())
    key_file = tmp_path / "mine.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    details = cli.json(
        "cert",
        "request",
        "imported.example.com",
        "--key-policy",
        "imported",
        "--key-file",
        str(key_file),
        "--wait",
    )
    assert details["key_type"] == "ec-p384"
    cert_pem, _, _ = exported(cli, details["id"], tmp_path)
    assert key_matches_certificate(key, x509.load_pem_x509_certificate(cert_pem))


def test_export_files_holding_keys_are_0600(cli: Cli, tmp_path: Path) -> None:
    cli.register()
    cli("cert", "request", "modes.example.com", "--wait")
    out = tmp_path / "pem"
    cli("cert", "export", "1", "--format", "pem", "--out", str(out))
    assert stat.S_IMODE((out / "privkey.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "cert.pem").stat().st_mode) == 0o644


def test_wait_refuses_a_port_held_by_something_else(cli: Cli) -> None:
    """The CLI answers HTTP-01 itself only if the port is free or already serves our store."""
    import socket
    import threading

    cli.register()
    port = int(cli.env["CERTBROKER_HTTP01_PORT"])
    with socket.socket() as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stranger.bind(("127.0.0.1", port))
        stranger.listen()

        def answer_garbage() -> None:
            while True:
                try:
                    conn, _ = stranger.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        try:
            result = cli("cert", "request", "stranger.example.com", "--wait", check=False)
        finally:
            # close() alone leaves the port listening while accept() blocks in the thread,
            # and this is the session Pebble's HTTP-01 port: later tests need it.
            stranger.shutdown(socket.SHUT_RDWR)
            thread.join(timeout=10)
    assert result.returncode == 1
    assert "does not answer certbroker's challenges" in result.stderr
    assert cli.json("cert", "list") == []  # nothing stored when the environment is wrong
