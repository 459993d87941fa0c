"""Devices that keep their keys: a CSR posted by a client to a real `serve`, ordered at
Pebble (validating over HTTP-01 for real) and answered with a chain for the device's own
key; names off the allow-list and bad CSRs refused before anything is ordered; one
client never sees another's."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store

from tests.conftest import Cli, make_cli
from tests.support.acme_peek import CaOrders
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, stop_serve, wait_until


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


@dataclass
class Site:
    cli: Cli
    serve: subprocess.Popen[str]
    tokens: dict[str, str]
    _orders: CaOrders | None = field(default=None, init=False, repr=False)

    def as_(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=api_url(self.cli),
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
            trust_env=False,
            timeout=60,
        )

    def certificates(self) -> int:
        return len(self.cli.json("cert", "list"))

    def ca_orders(self) -> int:
        """How many orders the broker's account ("main") has at Pebble, asked of Pebble
        (those Pebble lists: all but the invalid ones)."""
        if self._orders is None:
            key_file = self.cli.data_dir.parent / "main-account-key.pem"
            self._orders = CaOrders.of(self.cli, key_file)
        return self._orders.count()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("devices") / "data", pebble)
    cli.register()
    tokens = {
        "gw": last_line(cli("client", "add", "gw", "--allow", "*.dev.example.com").stdout),
        "asks": last_line(
            cli(
                "client", "add", "asks", "--allow", "*.dev.example.com", "--policy", "approve"
            ).stdout
        ),
        "admin": last_line(cli("token", "create", "--name", "boss", "--role", "admin").stdout),
        "other": last_line(cli("client", "add", "other", "--allow", "*.dev.example.com").stdout),
        "operator": last_line(cli("token", "create", "--name", "ops", "--role", "operator").stdout),
    }
    serve = start_api(cli, CERTBROKER_ADMIN_PASSWORD="device-tests-pw")
    try:
        yield Site(cli, serve, tokens)
    finally:
        stop_serve(serve)


def make_csr(key: Any, names: list[str]) -> str:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def with_an_ip_address(key: Any) -> str:
    """A CSR naming an IP address beside a DNS name: the CA would refuse the CSR after the
    order was made, so it is refused first."""
    import ipaddress

    names = [x509.DNSName("ip.dev.example.com"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def spki(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_device_gets_a_chain_for_its_own_key(site: Site) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["gw1.dev.example.com", "www.gw1.dev.example.com"]
    with site.as_("gw") as gw, site.as_("other") as other, site.as_("operator") as operator:
        posted = gw.post("/api/v1/csr", json={"csr": make_csr(key, names)})
        assert posted.status_code == 202, posted.text
        req_id = posted.json()["id"]
        assert posted.headers["location"] == f"/api/v1/csr/{req_id}"

        def state() -> dict[str, Any]:
            answer: dict[str, Any] = gw.get(f"/api/v1/csr/{req_id}").json()
            return answer

        wait_until("the device's certificate", lambda: state()["state"] == "valid",
                   serve=site.serve)  # fmt: skip
        chain = x509.load_pem_x509_certificates(state()["chain"].encode())
        assert spki(chain[0].public_key()) == spki(key.public_key())
        sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)
        assert len(chain) >= 2  # and its intermediate

        # Another client, an operator's token, no token: none of them sees it as a client.
        assert other.get(f"/api/v1/csr/{req_id}").status_code == 404
        assert operator.get(f"/api/v1/csr/{req_id}").status_code == 401
        assert httpx.get(api_url(site.cli) + f"/api/v1/csr/{req_id}",
                         trust_env=False).status_code == 401  # fmt: skip
        # ... and a client's token opens nothing of the operators' API.
        assert gw.get("/api/v1/certificates").status_code == 401
        # No key is held here: nothing holding one can be exported.
        cert_id = state()["certificate_id"]
        shown = operator.get(f"/api/v1/certificates/{cert_id}").json()
        assert shown["key_policy"] == "csr" and shown["status"] == "valid"
        refused = operator.post(f"/api/v1/certificates/{cert_id}/export",
                                json={"format": "pkcs12", "password": "x" * 10})  # fmt: skip
        assert refused.status_code == 422 and "holds none" in refused.json()["detail"]
        with site.as_("admin") as admin:
            settings = {"console_certificate_id": cert_id, "notify_to": []}
            serve_it = admin.put("/api/v1/settings", json=settings)
        assert serve_it.status_code == 422 and "holds no key" in serve_it.json()["detail"]


def test_names_off_the_list_and_bad_csrs_are_refused_before_any_order(site: Site) -> None:
    """Each refused with its reason, and Pebble sees no order for any of them; a good
    CSR sent last, as base64 DER, is ordered and issued (and shows the count moves)."""
    key = ec.generate_private_key(ec.SECP256R1())
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    broken = bytearray(
        x509.load_pem_x509_csr(make_csr(key, ["b.dev.example.com"]).encode()).public_bytes(
            serialization.Encoding.DER
        )
    )
    broken[-3] ^= 0x01
    cases = [
        (make_csr(key, ["gw1.dev.example.com", "gw1.elsewhere.example.com"]), 403,
         "gw1.elsewhere.example.com"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----", 422,
         "not a PEM"),
        (make_csr(weak, ["w.dev.example.com"]), 422, "too weak"),
        (base64.b64encode(bytes(broken)).decode(), 422, "signature does not verify"),
        (make_csr(key, [f"n{i}.dev.example.com" for i in range(101)]), 422, "101 names"),
        (make_csr(key, ["*.dev.example.com"]), 422, "wildcard"),
        (make_csr(key, ["ok.dev.example.com", "bad_name!.dev.example.com"]), 422,
         "'bad_name!' in 'bad_name!.dev.example.com' contains an underscore"),
        (with_an_ip_address(key), 422, "IPAddress entries; only DNS names"),
    ]  # fmt: skip
    before, ordered = site.certificates(), site.ca_orders()
    with site.as_("gw") as gw:
        for csr, status, words in cases:
            answer = gw.post("/api/v1/csr", json={"csr": csr})
            assert answer.status_code == status, (words, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert words in answer.json()["detail"], (words, answer.json())
        assert site.certificates() == before  # nothing stored ...
        assert site.ca_orders() == ordered  # ... and nothing ordered at the CA

        # A good CSR as base64 DER (no PEM armour): issued for the device's key. Being
        # queued after the refused ones, it also shows none of them was ordered late.
        device = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = x509.load_pem_x509_csr(make_csr(device, ["der.dev.example.com"]).encode())
        posted = gw.post("/api/v1/csr", json={
            "csr": base64.b64encode(der.public_bytes(serialization.Encoding.DER)).decode()
        })  # fmt: skip
        assert posted.status_code == 202, posted.text
        req_id = posted.json()["id"]

        def state() -> dict[str, Any]:
            answer: dict[str, Any] = gw.get(f"/api/v1/csr/{req_id}").json()
            return answer

        wait_until("the DER CSR's certificate", lambda: state()["state"] == "valid",
                   serve=site.serve)  # fmt: skip
        leaf = x509.load_pem_x509_certificates(state()["chain"].encode())[0]
    assert spki(leaf.public_key()) == spki(device.public_key())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["der.dev.example.com"]
    assert site.certificates() == before + 1
    assert site.ca_orders() == ordered + 1  # the DER one's, and that one only


def test_extensions_a_csr_requests_are_not_granted(site: Site) -> None:
    """A device asking to be a CA (basicConstraints CA:TRUE, keyCertSign) gets a plain
    leaf: the broker takes only the names and the key, and the CA (Pebble here) builds
    the certificate from its own profile."""
    key = ec.generate_private_key(ec.SECP256R1())
    signs_certificates = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("ca.dev.example.com")]),
                       critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(signs_certificates, critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    with site.as_("gw") as gw:
        posted = gw.post(
            "/api/v1/csr", json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
        )
        assert posted.status_code == 202, posted.text
        req_id = posted.json()["id"]

        def state() -> dict[str, Any]:
            answer: dict[str, Any] = gw.get(f"/api/v1/csr/{req_id}").json()
            return answer

        wait_until("the certificate", lambda: state()["state"] == "valid", serve=site.serve)
        leaf = x509.load_pem_x509_certificates(state()["chain"].encode())[0]
    assert spki(leaf.public_key()) == spki(key.public_key())
    constraints = extension(leaf, x509.BasicConstraints)
    assert constraints is None or constraints.ca is False  # absent: not a CA either
    usage = extension(leaf, x509.KeyUsage)
    assert usage is None or not (usage.key_cert_sign or usage.crl_sign)


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def test_a_disabled_client_is_refused(site: Site) -> None:
    site.cli("client", "disable", "other")
    try:
        with site.as_("other") as other:
            answer = other.post(
                "/api/v1/csr",
                json={"csr": make_csr(ec.generate_private_key(ec.SECP256R1()),
                                      ["x.dev.example.com"])},
            )  # fmt: skip
        assert answer.status_code == 401 and "disabled" in answer.json()["detail"]
    finally:
        site.cli("client", "enable", "other")


def test_names_off_the_list_wait_for_an_admin_where_the_policy_says_approve(
    site: Site,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    before, ordered = site.certificates(), site.ca_orders()
    with site.as_("asks") as asks, site.as_("admin") as admin, site.as_("operator") as operator:
        first = asks.post(
            "/api/v1/csr", json={"csr": make_csr(key, ["kiosk.elsewhere.example.com"])}
        )
        second = asks.post(
            "/api/v1/csr", json={"csr": make_csr(key, ["till.elsewhere.example.com"])}
        )
        for answer in (first, second):
            assert answer.status_code == 202, answer.text
            assert answer.json()["state"] == "awaiting-approval"
        assert site.certificates() == before  # nothing stored ...
        assert site.ca_orders() == ordered  # ... nor ordered while they wait

        waiting = site.cli.json("approvals", "list")
        assert [w["names"] for w in waiting] == [
            ["kiosk.elsewhere.example.com"],
            ["till.elsewhere.example.com"],
        ]
        assert operator.get("/api/v1/approvals").status_code == 403  # an admin decides
        assert len(admin.get("/api/v1/approvals").json()) == 2

        # One denied on the CLI, the other approved through the API.
        site.cli("approvals", "deny", str(second.json()["id"]), "--reason", "not ours")
        shown = asks.get(f"/api/v1/csr/{second.json()['id']}").json()
        assert shown["state"] == "denied" and shown["reason"] == "not ours"
        approved = admin.post(f"/api/v1/approvals/{first.json()['id']}/approve")
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] in ("pending", "valid")

        def approved_state() -> dict[str, Any]:
            answer: dict[str, Any] = asks.get(f"/api/v1/csr/{first.json()['id']}").json()
            return answer

        wait_until("the approved certificate", lambda: approved_state()["state"] == "valid",
                   serve=site.serve)  # fmt: skip
        leaf = x509.load_pem_x509_certificates(approved_state()["chain"].encode())[0]
        assert spki(leaf.public_key()) == spki(key.public_key())
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["kiosk.elsewhere.example.com"]
        # A denial is final; so is an approval.
        again = admin.post(f"/api/v1/approvals/{second.json()['id']}/approve")
        assert again.status_code == 422 and "decided already (denied)" in again.text
        twice = site.cli("approvals", "deny", str(first.json()["id"]), "--reason", "late",
                         check=False)  # fmt: skip
        assert twice.returncode == 2 and "decided already (accepted)" in twice.stderr
        assert asks.get(f"/api/v1/csr/{first.json()['id']}").json()["state"] == "valid"
        assert site.cli.json("approvals", "list") == []
    assert site.certificates() == before + 1  # the approved one only ...
    assert site.ca_orders() == ordered + 1  # ... and one order for it at the CA


def test_a_device_holds_one_websocket_and_is_pushed_its_chain(site: Site) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = api_url(site.cli).replace("http://", "ws://") + "/api/v1/csr/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": "Bearer cbc_not-a-token"})
    assert refused.value.response.status_code == 403
    key = ec.generate_private_key(ec.SECP384R1())
    before, ordered = site.certificates(), site.ca_orders()
    with connect(
        url, additional_headers={"Authorization": f"Bearer {site.tokens['gw']}"},
        open_timeout=10,
    ) as socket:  # fmt: skip
        socket.send(json.dumps({"csr": make_csr(key, ["ws.elsewhere.example.com"])}))
        error = json.loads(socket.recv(timeout=30))["error"]
        assert error["status"] == 403 and "ws.elsewhere.example.com" in error["detail"]
        socket.send("not json")
        assert json.loads(socket.recv(timeout=30))["error"]["status"] == 400
        socket.send(b"\x00binary")
        assert json.loads(socket.recv(timeout=30))["error"]["status"] == 400
        assert site.certificates() == before
        assert site.ca_orders() == ordered  # the refused one was not ordered

        socket.send(json.dumps({"csr": make_csr(key, ["ws.dev.example.com"])}))
        states = []
        while not states or states[-1]["state"] not in ("valid", "failed"):
            states.append(json.loads(socket.recv(timeout=120)))
    assert states[0]["state"] == "pending" and states[-1]["state"] == "valid"
    leaf = x509.load_pem_x509_certificates(states[-1]["chain"].encode())[0]
    assert spki(leaf.public_key()) == spki(key.public_key())
    assert site.ca_orders() == ordered + 1  # the accepted one's only


def test_admins_manage_clients_through_the_api(site: Site) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with site.as_("admin") as admin, site.as_("operator") as operator:
        assert operator.get("/api/v1/clients").status_code == 403
        assert operator.post("/api/v1/clients", json={"name": "x"}).status_code == 403
        made = admin.post("/api/v1/clients", json={"name": "lb1", "allow": ["lb1.example.org"]})
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        assert token.startswith("cbc_")
        assert all("token" not in c for c in admin.get("/api/v1/clients").json())
        shown = admin.get("/api/v1/clients/lb1")
        assert shown.status_code == 200, shown.text
        assert shown.json()["name"] == "lb1" and shown.json()["allow"] == ["lb1.example.org"]
        assert "token" not in shown.json() and token not in shown.text
        assert operator.get("/api/v1/clients/lb1").status_code == 403

        def post_csr(secret: str, name: str) -> httpx.Response:
            return httpx.post(
                api_url(site.cli) + "/api/v1/csr",
                json={"csr": make_csr(key, [name])},
                headers={"Authorization": f"Bearer {secret}"},
                trust_env=False,
            )

        assert post_csr(token, "lb2.example.org").status_code == 403
        changed = admin.patch("/api/v1/clients/lb1", json={"add": ["lb2.example.org"]})
        assert changed.json()["allow"] == ["lb1.example.org", "lb2.example.org"]
        assert post_csr(token, "lb2.example.org").status_code == 202
        newer = admin.post("/api/v1/clients/lb1/rotate-token").json()["token"]
        assert post_csr(token, "lb1.example.org").status_code == 401
        assert admin.patch("/api/v1/clients/lb1", json={"enabled": False}).status_code == 200
        assert post_csr(newer, "lb1.example.org").status_code == 401
        assert admin.delete("/api/v1/clients/lb1").status_code == 200
        assert admin.get("/api/v1/clients/lb1").status_code == 404


def test_the_trust_list_verifies_the_chains_the_devices_get(site: Site) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = "trust.dev.example.com"
    with site.as_("gw") as gw, site.as_("admin") as admin, site.as_("operator") as operator:
        req_id = gw.post("/api/v1/csr", json={"csr": make_csr(key, [name])}).json()["id"]

        def chain() -> str | None:
            shown: dict[str, Any] = gw.get(f"/api/v1/csr/{req_id}").json()
            return shown.get("chain")

        wait_until("the device's certificate", lambda: chain() is not None, serve=site.serve)
        leaf, *intermediates = x509.load_pem_x509_certificates((chain() or "").encode())
        assert site.cli.pebble is not None
        root_pem = site.cli.pebble.roots_pem()

        not_a_root = admin.put("/api/v1/trust/roots", json={"pem": chain()})
        assert not_a_root.status_code == 422 and "not a root" in not_a_root.json()["detail"]
        assert operator.put("/api/v1/trust/roots", json={"pem": ""}).status_code == 403
        assert admin.put("/api/v1/trust/roots", json={"pem": root_pem.decode()}).status_code == 200

    served = httpx.get(api_url(site.cli) + "/trust/roots.pem", trust_env=False)  # no token
    assert served.status_code == 200
    trusted = x509.load_pem_x509_certificates(served.content)
    assert all(c in trusted for c in intermediates)
    roots = [c for c in trusted if c.issuer == c.subject]
    assert roots and b"PRIVATE" not in served.content
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, [c for c in trusted if c not in roots])  # raises if it does not
