"""The core flows against a second real CA: step-ca's ACME server as Caddy runs it
(tests/support/caddy.py), validating certbroker's real HTTP-01 responder. Pebble is kind;
step-ca lists an account's orders as a bare JSON array, keeps a failed challenge
"pending", lists keyChange but does not implement it, and ignores an external account
binding it did not ask for.

One Caddy for the run: these tests share one xdist group (so one worker runs them, one
at a time on the responder's address and port 80)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import PolicyBuilder, Store

from certbroker.ca.acme_client import AcmeCA
from certbroker.crypto.keys import key_matches_certificate, load_private_key
from certbroker.domain.errors import PermanentError
from tests.conftest import Cli, make_cli
from tests.support.caddy import RESPONDER_ADDRESS, CaddyServer, start_caddy

pytestmark = pytest.mark.xdist_group("step-ca")


@pytest.fixture(scope="module")
def caddy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaddyServer]:
    server = start_caddy(tmp_path_factory.mktemp("caddy"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def step(tmp_path: Path, caddy: CaddyServer) -> Cli:
    """A CLI whose HTTP-01 responder answers where Caddy looks for the test names."""
    cli = make_cli(tmp_path / "data", None)
    cli.env.update({"CERTBROKER_HTTP01_ADDRESS": RESPONDER_ADDRESS, "CERTBROKER_HTTP01_PORT": "80"})
    return cli


def register(cli: Cli, caddy: CaddyServer, name: str = "main", *extra: str) -> dict[str, Any]:
    account: dict[str, Any] = cli.json(
        "account", "register", "--directory", caddy.directory_url, "--ca-bundle",
        str(caddy.ca_bundle), "--email", f"{name}@example.com", "--agree-tos", "--name", name,
        *extra,
    )  # fmt: skip
    return account


def exported(cli: Cli, cert_id: int, out: Path) -> tuple[x509.Certificate, bytes, bytes]:
    cli("cert", "export", str(cert_id), "--format", "pem", "--out", str(out))
    cert_pem = (out / "cert.pem").read_bytes()
    return (
        x509.load_pem_x509_certificate(cert_pem),
        (out / "chain.pem").read_bytes(),
        (out / "privkey.pem").read_bytes(),
    )


def verify_chain(caddy: CaddyServer, leaf: x509.Certificate, chain_pem: bytes, name: str) -> None:
    """The leaf chains to Caddy's root through the intermediate the broker stored."""
    root = x509.load_pem_x509_certificate(caddy.ca_bundle.read_bytes())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(name))
    assert verifier.verify(leaf, x509.load_pem_x509_certificates(chain_pem))[-1] == root


def account_at_ca(caddy: CaddyServer, key_pem: bytes) -> AcmeCA:
    ca = AcmeCA(caddy.directory_url, load_private_key(key_pem), ca_bundle=str(caddy.ca_bundle))
    ca.find_account()
    return ca


def test_two_names_issued_renewed_and_revoked(
    step: Cli, caddy: CaddyServer, tmp_path: Path
) -> None:
    register(step, caddy)
    names = ["a.step.test", "b.step.test"]
    first = step.json("cert", "request", *names, "--wait")
    assert first["status"] == "valid" and first["names"] == names
    leaf, chain, key_pem = exported(step, first["id"], tmp_path / "first")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == names
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)  # the default, ec-p256
    assert key_matches_certificate(load_private_key(key_pem), leaf)
    verify_chain(caddy, leaf, chain, names[1])

    # A second order of the same account (step-ca refused every one after its orders
    # list was asked for while none was pending).
    step("cert", "renew", str(first["id"]))
    renewed = step.json("cert", "show", str(first["id"]))
    assert renewed["status"] == "valid" and renewed["serial"] != first["serial"]
    leaf2, chain2, _ = exported(step, first["id"], tmp_path / "renewed")
    assert leaf2.serial_number != leaf.serial_number
    verify_chain(caddy, leaf2, chain2, names[0])
    assert [a["state"] for a in renewed["attempts"]] == ["valid", "valid"]

    out = step("cert", "revoke", str(first["id"]), "--reason", "superseded")
    assert "revoked" in out.stdout
    assert step.json("cert", "show", str(first["id"]))["status"] == "revoked"
    # The CA has it revoked: asked again, it says so.
    key_file = tmp_path / "account.pem"
    step("account", "export-key", "main", "--out", str(key_file))
    with pytest.raises(PermanentError, match=r"alreadyRevoked|already revoked"):
        account_at_ca(caddy, key_file.read_bytes()).revoke(leaf2.public_bytes(Encoding.PEM), 0)


def test_rsa_and_ec_keys(step: Cli, caddy: CaddyServer, tmp_path: Path) -> None:
    register(step, caddy, "main", "--key-type", "rsa2048")  # an RSA account key too
    for key_type, name, kind, size in (
        ("rsa2048", "c.step.test", rsa.RSAPublicKey, 2048),
        ("ec-p384", "d.step.test", ec.EllipticCurvePublicKey, 384),
    ):
        details = step.json("cert", "request", name, "--key-type", key_type, "--wait")
        assert details["key_type"] == key_type
        leaf, chain, key_pem = exported(step, details["id"], tmp_path / key_type)
        public = leaf.public_key()
        assert isinstance(public, kind) and public.key_size == size
        assert key_matches_certificate(load_private_key(key_pem), leaf)
        verify_chain(caddy, leaf, chain, name)


def test_account_lifecycle(step: Cli, caddy: CaddyServer, tmp_path: Path) -> None:
    # An external account binding this CA did not ask for: it registers all the same.
    account = register(
        step, caddy, "main", "--eab-kid", "kid-1",
        "--eab-hmac-key", "c2VjcmV0LWtleS1vZi10aGlydHktdHdvLWJ5dGVzLTEy",
    )  # fmt: skip
    assert account["status"] == "valid" and account["uri"].startswith(
        caddy.directory_url.rsplit("/", 1)[0]
    )
    before = tmp_path / "before.pem"
    step("account", "export-key", "main", "--out", str(before))
    step("account", "update", "main", "--email", "ops@example.com")
    assert step.json("account", "show", "main")["emails"] == ["ops@example.com"]
    at_ca = account_at_ca(caddy, before.read_bytes()).query_account()
    assert at_ca.contacts == ("mailto:ops@example.com",)

    # step-ca lists keyChange but does not implement it: one clear line, and the
    # account goes on with its old key, here and at the CA.
    refused = step("account", "rollover", "main", check=False)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "does not support account key rollover" in lines[0]
    assert "keeps its current key" in lines[0]
    after = tmp_path / "after.pem"
    step("account", "export-key", "main", "--out", str(after))
    assert after.read_bytes() == before.read_bytes()
    assert step.json("cert", "request", "e.step.test", "--wait")["status"] == "valid"

    step("account", "deactivate", "main", "--yes")
    assert step.json("account", "show", "main")["status"] == "deactivated"
    with pytest.raises(PermanentError, match=r"unauthorized|deactivated"):
        account_at_ca(caddy, before.read_bytes()).new_order(["f.step.test"])


def test_an_order_its_process_died_after_creating_is_resumed(step: Cli, caddy: CaddyServer) -> None:
    """A takeover asks the CA for the account's orders; step-ca answers with a bare
    list, and the orphan is found in it and finished, not ordered twice."""
    register(step, caddy)
    killed = step("cert", "request", "g.step.test", "--wait", check=False,
                  env={"CERTBROKER_FAULT_KILL_AFTER": "order-created"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = step("cert", "resume", "1")
    assert "was created before its process died: resuming it" in resumed.stderr
    shown = step.json("cert", "show", "1")
    assert shown["status"] == "valid"
    assert [a["state"] for a in shown["attempts"]] == ["valid"]
