"""Prove the Pebble harness works, using only the raw ``acme`` library.

Deliberately independent of certbroker's own code: if these tests fail the problem
is the harness or the Pebble installation, not the broker.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from josepy.jwa import ES256
from josepy.jwk import JWKEC

try:
    from support.pebble import PebbleServer, start_pebble
    from support.ports import free_port
except ModuleNotFoundError:  # tests/ is not on sys.path (no rootdir conftest / pythonpath)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support.pebble import PebbleServer, start_pebble
    from support.ports import free_port

pytestmark = [pytest.mark.pebble]

DOMAIN = "harness.example.com"
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# Revocation reason "superseded" (RFC 5280 CRLReason 4).
REASON_SUPERSEDED = 4


class _ChallengeHandler(BaseHTTPRequestHandler):
    tokens: ClassVar[dict[str, str]]
    hits: ClassVar[list[str]]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        token = self.path.removeprefix(CHALLENGE_PREFIX)
        body = self.tokens.get(token) if self.path.startswith(CHALLENGE_PREFIX) else None
        if body is None:
            self.send_error(404)
            return
        payload = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass


class Http01Responder:
    """A tiny HTTP-01 responder on 127.0.0.1:<port> serving tokens from a dict."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.hits: list[str] = []
        handler = type(
            "BoundChallengeHandler",
            (_ChallengeHandler,),
            {"tokens": self.tokens, "hits": self.hits},
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def responder() -> Iterator[Http01Responder]:
    srv = Http01Responder()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def pebble(tmp_path: Path, responder: Http01Responder) -> Iterator[PebbleServer]:
    # nonce_reject=0: acme's ClientV2 retries a badNonce only once, and this test is
    # about the harness, not nonce handling.
    server = start_pebble(tmp_path / "pebble", http_port=responder.port, nonce_reject=0)
    try:
        yield server
    finally:
        server.stop()


def _acme_client(server: PebbleServer) -> tuple[client.ClientV2, JWKEC]:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = client.ClientNetwork(
        key,
        alg=ES256,
        # requests accepts a CA bundle path for `verify`; acme merely annotates it as bool.
        verify_ssl=str(server.ca_bundle),  # type: ignore[arg-type]
        user_agent="certbroker-tests/pebble-harness",
    )
    directory = client.ClientV2.get_directory(server.directory_url, net)
    return client.ClientV2(directory, net), key


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def test_http01_issuance_chain_and_revocation(
    pebble: PebbleServer, responder: Http01Responder
) -> None:
    acme_client, account_key = _acme_client(pebble)
    regr = acme_client.new_account(
        messages.NewRegistration.from_data(
            email="harness@example.com", terms_of_service_agreed=True
        )
    )
    assert regr.body.status == "valid"

    cert_key = ec.generate_private_key(ec.SECP256R1())
    cert_key_pem = cert_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    order = acme_client.new_order(crypto_util.make_csr(cert_key_pem, [DOMAIN]))

    answered = 0
    for authz in order.authorizations:
        assert authz.body.identifier.value == DOMAIN
        if authz.body.status == messages.STATUS_VALID:
            continue  # Pebble may reuse a valid authorization (not on a fresh server)
        challb = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = challb.response_and_validation(account_key)
        responder.tokens[challb.chall.encode("token")] = validation
        acme_client.answer_challenge(challb, response)
        answered += 1
    assert answered == 1

    deadline = dt.datetime.now() + dt.timedelta(seconds=60)
    order = acme_client.poll_and_finalize(order, deadline)
    assert order.fullchain_pem is not None
    # Pebble's VA really fetched the token from our responder (always_valid=False).
    assert any(hit.startswith(CHALLENGE_PREFIX) for hit in responder.hits)

    chain = _pem_certs(order.fullchain_pem.encode())
    leaf, served_intermediates = chain[0], chain[1:]
    roots = _pem_certs(pebble.roots_pem())
    intermediates = _pem_certs(pebble.intermediates_pem())
    assert len(roots) == 1
    assert len(intermediates) == 1
    assert served_intermediates == intermediates

    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [DOMAIN]
    leaf.verify_directly_issued_by(intermediates[0])
    intermediates[0].verify_directly_issued_by(roots[0])
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .build_server_verifier(x509.DNSName(DOMAIN))
    )
    built = verifier.verify(leaf, served_intermediates)
    assert built[-1] == roots[0]

    status = pebble.cert_status(leaf.serial_number)
    assert status["Status"] == "Valid"
    assert status["Serial"] == format(leaf.serial_number, "x")
    assert x509.load_pem_x509_certificate(status["Certificate"].encode()) == leaf

    acme_client.revoke(leaf, REASON_SUPERSEDED)
    status = pebble.cert_status(leaf.serial_number)
    assert status["Status"] == "Revoked"
    assert status["Reason"] == REASON_SUPERSEDED
    assert status["RevokedAt"]

    with pytest.raises(LookupError):
        pebble.cert_status(leaf.serial_number + 1)


def test_external_account_binding_required(tmp_path: Path) -> None:
    hmac_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    server = start_pebble(
        tmp_path / "pebble-eab",
        http_port=free_port(),
        always_valid=True,
        nonce_reject=0,
        eab_keys={"kid-1": hmac_key},
        eab_required=True,
    )
    try:
        acme_client, account_key = _acme_client(server)
        assert acme_client.external_account_required()

        with pytest.raises(messages.Error) as excinfo:
            acme_client.new_account(
                messages.NewRegistration.from_data(
                    email="eab@example.com", terms_of_service_agreed=True
                )
            )
        assert excinfo.value.code == "externalAccountRequired"
        assert excinfo.value.typ == "urn:ietf:params:acme:error:externalAccountRequired"

        # A binding made with the wrong key is refused too.
        wrong = messages.ExternalAccountBinding.from_data(
            account_public_key=account_key.public_key(),
            kid="kid-1",
            hmac_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode(),
            directory=acme_client.directory,
        )
        with pytest.raises(messages.Error):
            acme_client.new_account(
                messages.NewRegistration.from_data(
                    email="eab@example.com",
                    terms_of_service_agreed=True,
                    external_account_binding=wrong,
                )
            )

        eab = messages.ExternalAccountBinding.from_data(
            account_public_key=account_key.public_key(),
            kid="kid-1",
            hmac_key=hmac_key,
            directory=acme_client.directory,
        )
        regr = acme_client.new_account(
            messages.NewRegistration.from_data(
                email="eab@example.com",
                terms_of_service_agreed=True,
                external_account_binding=eab,
            )
        )
        assert regr.body.status == "valid"
        assert regr.uri

        # Same key again: Pebble answers 200 + Location, which acme reports as a conflict.
        # (new_account must be signed with the embedded JWK, not the account's kid.)
        acme_client.net.account = None
        with pytest.raises(errors.ConflictError) as conflict:
            acme_client.new_account(
                messages.NewRegistration.from_data(
                    email="eab@example.com",
                    terms_of_service_agreed=True,
                    external_account_binding=eab,
                )
            )
        assert conflict.value.location == regr.uri
    finally:
        server.stop()


def test_restart_forgets_state_and_stop_is_idempotent(tmp_path: Path) -> None:
    server = start_pebble(tmp_path / "pebble-restart", http_port=free_port(), always_valid=True)
    try:
        root_before = server.roots_pem()
        pid_before = server.pid
        server.restart()
        assert server.is_running()
        assert server.pid != pid_before
        # Pebble regenerates its issuing hierarchy on every start.
        assert server.roots_pem() != root_before
    finally:
        server.stop()
    server.stop()
    assert not server.is_running()
    assert server.pebble_log.exists()
