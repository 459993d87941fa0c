"""The trust list's roots from the caIssuers address of an intermediate (services/trust.py).

Pebble's certificates carry no Authority Information Access, so here a PKI made in the
test (root, intermediate with a caIssuers URI, leaf for device.example.com) and a real
HTTP server on loopback stand in for a CA that publishes its root: the root is fetched
once, kept in the store, and a device trusting only /trust/roots.pem verifies the leaf.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certbroker.config import Settings
from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.services.common import ServiceContext
from certbroker.services.order_run import describe
from certbroker.services.trust import FETCHED_KEY, RETRY_FAILED
from certbroker.store.db import make_engine
from certbroker.store.repository import Repository
from certbroker.wiring import Broker
from tests.support.ports import free_port
from tests.unit.conftest import LEASE, NOW, new_certificate

DEVICE = "device.example.com"


# -- a CA's web server: bodies by path, requests counted ------------------------------------


class CAWebServer:
    """Answers GET with what `routes` holds for the path (404 otherwise) and counts the
    requests per path, the unknown ones included."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                status, headers, body = server.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, body: bytes, status: int = 200, **headers: str) -> None:
        self.routes[path] = (status, headers, body)


@pytest.fixture
def web() -> Iterator[CAWebServer]:
    server = CAWebServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests would send the fetch of a loopback URL through a proxy from the env."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


# -- a PKI of the test's own --------------------------------------------------------------


@dataclass
class Pki:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca_issuers: str | None = None,
) -> x509.Certificate:
    """A CA certificate: self-signed when `issuer` is None."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    if ca_issuers is not None:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(ca_issuers),
                    )
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(ca_issuers: str) -> Pki:
    """A root, an intermediate it signed naming `ca_issuers` as where its issuer is, and a
    leaf for device.example.com the intermediate signed."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca("Test Root", root_key, None, root_key)
    intermediate = _ca("Test Intermediate", inter_key, root, root_key, ca_issuers)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(DEVICE))
        .issuer_name(intermediate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DEVICE)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key()), False
        )
        .sign(inter_key, hashes.SHA256())
    )
    return Pki(root=root, intermediate=intermediate, leaf=leaf, root_key=root_key)


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


# -- the broker over a store file ------------------------------------------------------------


def open_broker(tmp_path: Path, at: datetime = NOW) -> Broker:
    """A Broker on the conftest's store file (migrated, with account 1), its clock fixed
    at `at`."""
    repo = Repository(make_engine(f"sqlite:///{tmp_path / 'store.db'}"))
    ctx = ServiceContext(
        repo=repo,
        sealer=Sealer(new_master_key()),
        ca_factory=None,  # type: ignore[arg-type]  # nothing here reaches a CA
        clock=lambda: at,
    )
    return Broker(settings=Settings(data_dir=tmp_path), repo=repo, ctx=ctx)


@pytest.fixture
def broker(repo: Repository, tmp_path: Path) -> Broker:
    return open_broker(tmp_path)


def store_device_certificate(broker: Broker, pki: Pki) -> None:
    """device.example.com's certificate as an order stores it: the leaf, and the chain the
    CA sent (the intermediate, no root)."""
    repo = broker.repo
    cert, order = repo.create_certificate(new_certificate(DEVICE), NOW, "w", NOW + LEASE)
    issued = describe(pem(pki.leaf), pem(pki.intermediate), "https://ca/order/1")
    plan = RenewalPlan(NOW + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(cert.id, order.id, "w", issued, NOW, plan)
    assert repo.distinct_chains() == [pem(pki.intermediate)]


def trust_list(broker: Broker) -> list[x509.Certificate]:
    """What GET /trust/roots.pem serves, read as a device would."""
    return x509.load_pem_x509_certificates(broker.trust.roots_pem().encode())


def fetched(broker: Broker) -> dict[str, str]:
    found: dict[str, str] = json.loads(broker.repo.get_setting(FETCHED_KEY) or "{}")
    return found


def verify_as_device(roots_pem: list[x509.Certificate], leaf: x509.Certificate) -> list[str]:
    """Verifies `leaf` trusting roots.pem's self-signed certificates only, its others as
    the intermediates at hand; the subjects of the chain it built."""
    roots = [c for c in roots_pem if c.subject == c.issuer]
    others = [c for c in roots_pem if c.subject != c.issuer]
    verifier = (
        PolicyBuilder().store(Store(roots)).time(NOW).build_server_verifier(x509.DNSName(DEVICE))
    )
    return [c.subject.rfc4514_string() for c in verifier.verify(leaf, others)]


# -- the root at the caIssuers address -------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def _pkcs7(cert: x509.Certificate) -> bytes:
    return pkcs7.serialize_certificates([cert], Encoding.DER)


@pytest.mark.parametrize("encode", [_der, _pem, _pkcs7], ids=["der", "pem", "pkcs7"])
def test_the_root_at_the_caissuers_url_is_fetched_once_and_trusted(
    web: CAWebServer,
    broker: Broker,
    tmp_path: Path,
    encode: Callable[[x509.Certificate], bytes],
) -> None:
    pki = make_pki(web.url("/root.der"))
    web.serve("/root.der", encode(pki.root))
    store_device_certificate(broker, pki)

    assert trust_list(broker) == [pki.root, pki.intermediate]  # the root first, once each
    assert web.hits == {"/root.der": 1}
    assert fetched(broker) == {web.url("/root.der"): pem(pki.root)}
    chain = verify_as_device(trust_list(broker), pki.leaf)
    assert chain == ["CN=device.example.com", "CN=Test Intermediate", "CN=Test Root"]

    assert trust_list(broker) == [pki.root, pki.intermediate]
    again = open_broker(tmp_path)  # another process: the cache is in the store
    assert again.trust.roots_pem() == broker.trust.roots_pem()
    assert web.hits == {"/root.der": 1}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "certbroker.api" and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("answer", ["closed-port", "404"])
def test_an_issuer_that_cannot_be_had_leaves_the_intermediate_and_is_not_asked_again(
    web: CAWebServer,
    broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    answer: str,
) -> None:
    if answer == "closed-port":
        url = f"http://127.0.0.1:{free_port()}/root.der"  # nothing listens there
    else:
        url = web.url("/root.der")  # nothing served there: 404
    pki = make_pki(url)
    store_device_certificate(broker, pki)

    with caplog.at_level(logging.WARNING, logger="certbroker.api"):
        assert trust_list(broker) == [pki.intermediate]
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"trust list: cannot fetch {url}: ")
    if answer == "404":
        assert "404" in warning
        assert web.hits == {"/root.der": 1}
    assert fetched(broker) == {url: ""}  # remembered as not to be had

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="certbroker.api"):
        assert trust_list(broker) == [pki.intermediate]
        assert trust_list(open_broker(tmp_path)) == [pki.intermediate]
    assert _warnings(caplog) == []  # every failed fetch warns: none was tried
    assert web.hits == ({"/root.der": 1} if answer == "404" else {})
    assert fetched(broker) == {url: ""}


def test_an_issuer_that_could_not_be_had_is_asked_again_hours_later(
    web: CAWebServer, broker: Broker, tmp_path: Path
) -> None:
    pki = make_pki(web.url("/root.der"))
    store_device_certificate(broker, pki)
    assert trust_list(broker) == [pki.intermediate]  # 404: the CA's server was down
    web.serve("/root.der", _der(pki.root))  # back

    assert trust_list(open_broker(tmp_path, NOW + timedelta(hours=1))) == [pki.intermediate]
    assert web.hits == {"/root.der": 1}  # not yet
    later = open_broker(tmp_path, NOW + RETRY_FAILED)
    assert trust_list(later) == [pki.root, pki.intermediate]
    assert web.hits == {"/root.der": 2}
    assert trust_list(later) == [pki.root, pki.intermediate]
    assert web.hits == {"/root.der": 2}  # had now: kept


def test_a_redirect_at_the_caissuers_url_is_not_followed(
    web: CAWebServer, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(web.url("/root.der"))
    web.serve("/root.der", b"", 301, Location=web.url("/moved/root.der"))
    web.serve("/moved/root.der", _der(pki.root))
    store_device_certificate(broker, pki)

    with caplog.at_level(logging.WARNING, logger="certbroker.api"):
        assert trust_list(broker) == [pki.intermediate]
        assert trust_list(broker) == [pki.intermediate]
    assert web.hits == {"/root.der": 1}  # /moved/root.der never asked for
    assert fetched(broker) == {web.url("/root.der"): ""}
    assert _warnings(caplog) == [f"trust list: cannot fetch {web.url('/root.der')}: HTTP 301"]


def test_a_certificate_at_the_caissuers_url_that_is_not_a_root_is_left_out(
    web: CAWebServer, broker: Broker
) -> None:
    pki = make_pki(web.url("/root.der"))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _ca("Other Intermediate", other_key, pki.root, pki.root_key)
    web.serve("/root.der", _der(other))
    store_device_certificate(broker, pki)

    assert trust_list(broker) == [pki.intermediate]
    assert fetched(broker) == {web.url("/root.der"): pem(other)}  # had, and not taken
    assert trust_list(broker) == [pki.intermediate]
    assert web.hits == {"/root.der": 1}


def test_a_self_signed_certificate_that_did_not_sign_the_intermediate_is_left_out(
    web: CAWebServer, broker: Broker
) -> None:
    pki = make_pki(web.url("/root.der"))
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    web.serve("/root.der", _der(_ca("Test Root", stranger_key, None, stranger_key)))
    store_device_certificate(broker, pki)

    assert trust_list(broker) == [pki.intermediate]
