"""Per-client bounds (issue 24, finding 6) against a real `serve` with small limits: one
client's websockets and long polls beyond client_connections are refused (1008, 429)
while another client's go on; a CSR beyond the client's certificate cap (409) or its
requests awaiting approval (429) is refused over REST and the device socket, and nothing
of it reaches the CA."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Cli, make_cli
from tests.integration.test_client_authority import closed_by_the_broker
from tests.support.acme_peek import CaOrders
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, stop_serve, wait_until

CONNECTIONS = 2  # client_connections of the serve below
LIMITS = {
    "CERTBROKER_CLIENT_CONNECTIONS": str(CONNECTIONS),
    "CERTBROKER_CLIENT_ZONE_CERTIFICATES": "1",
    "CERTBROKER_CLIENT_APPROVAL_REQUESTS": "1",
}


@dataclass
class Site:
    cli: Cli
    _orders: CaOrders | None = field(default=None, init=False, repr=False)

    def add_client(self, name: str, *options: str) -> str:
        out = self.cli("client", "add", name, "--allow", "*.limits.example.com", *options).stdout
        return out.strip().splitlines()[-1]

    def ws_url(self, path: str) -> str:
        return api_url(self.cli).replace("http://", "ws://") + path

    @contextlib.contextmanager
    def agent(self, token: str) -> Iterator[ClientConnection]:
        """An agent's websocket, greeted: it is open and served."""
        headers = {"Authorization": f"Bearer {token}"}
        with connect(self.ws_url("/api/v1/agent/ws"), additional_headers=headers,
                     open_timeout=10) as socket:  # fmt: skip
            socket.send(json.dumps({"type": "hello", "certificates": []}))
            assert json.loads(socket.recv(timeout=30))["type"] == "welcome"
            yield socket

    @contextlib.contextmanager
    def device(self, token: str) -> Iterator[ClientConnection]:
        """A device's websocket, answered once: it is open and served."""
        headers = {"Authorization": f"Bearer {token}"}
        with connect(self.ws_url("/api/v1/csr/ws"), additional_headers=headers,
                     open_timeout=10) as socket:  # fmt: skip
            socket.send("not json")
            assert json.loads(socket.recv(timeout=30))["error"]["status"] == 400
            yield socket

    def http(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=api_url(self.cli),
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=60,
        )

    def ca_orders(self) -> int:
        """The orders of the broker's account at Pebble, asked of Pebble."""
        if self._orders is None:
            key_file = self.cli.data_dir.parent / "limits-account-key.pem"
            self._orders = CaOrders.of(self.cli, key_file)
        return self._orders.count()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("limits") / "data", pebble)
    cli.register()
    serve = start_api(cli, CERTBROKER_WORKER_PROCESSES="1", **LIMITS)
    try:
        yield Site(cli)
    finally:
        stop_serve(serve)


def make_csr(names: list[str]) -> str:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def refused_at_once(site: Site, token: str) -> tuple[int | None, str]:
    """An agent's websocket opened beyond the limit: its close code and reason."""
    headers = {"Authorization": f"Bearer {token}"}
    with connect(site.ws_url("/api/v1/agent/ws"), additional_headers=headers,
                 open_timeout=10) as socket:  # fmt: skip
        return closed_by_the_broker(socket)


def test_a_clients_connections_beyond_the_limit_are_refused(site: Site) -> None:
    token = site.add_client("gw-many")
    other = site.add_client("gw-other")
    poll = {"hello": {"type": "hello", "certificates": []}, "wait": 0}
    with site.agent(token), site.device(token):  # websockets of either kind count
        code, reason = refused_at_once(site, token)
        assert code == 1008
        assert f"at most {CONNECTIONS} connections per client" in reason
        assert "client_connections" in reason
        with site.http(token) as http:
            answer = http.post("/api/v1/agent/poll", json=poll)
        assert answer.status_code == 429, answer.text
        assert "client_connections" in answer.json()["detail"]
        assert "CERTBROKER_CLIENT_CONNECTIONS" in answer.json()["detail"]
        assert int(answer.headers["retry-after"]) > 0
        # Another client is not counted with this one.
        with site.agent(other), site.device(other):
            pass

    # Closed again: the client may connect again (once the broker has seen them go).
    def accepted() -> bool:
        try:
            with site.agent(token), site.agent(token):
                return True
        except (ConnectionClosed, AssertionError):
            return False

    wait_until("the client's connections to be free again", accepted)
    with site.http(token) as http:
        assert http.post("/api/v1/agent/poll", json=poll).status_code == 200


def test_a_csr_beyond_the_certificate_cap_reaches_neither_store_nor_ca(site: Site) -> None:
    token = site.add_client("dev-cap")
    with site.http(token) as http:
        first = http.post("/api/v1/csr", json={"csr": make_csr(["a.limits.example.com"])})
        assert first.status_code == 202, first.text
        second = http.post("/api/v1/csr", json={"csr": make_csr(["b.limits.example.com"])})
        assert second.status_code == 409, second.text
        detail = second.json()["detail"]
        assert "may hold 1 certificate" in detail and "client_zone_certificates" in detail
        with site.device(token) as socket:
            socket.send(json.dumps({"csr": make_csr(["c.limits.example.com"])}))
            error: dict[str, Any] = json.loads(socket.recv(timeout=30))["error"]
        assert error["status"] == 409 and "may hold 1 certificate" in error["detail"]
        assert len(http.get("/api/v1/csr").json()) == 1  # no request stored for either

        def state() -> str:
            return str(http.get(f"/api/v1/csr/{first.json()['id']}").json()["state"])

        wait_until("the first certificate", lambda: state() in ("valid", "failed"))
        assert state() == "valid"
    assert [c["names"] for c in site.cli.json("cert", "list")] == [["a.limits.example.com"]]
    assert site.ca_orders() == 1  # the first one's alone


def test_requests_beyond_those_awaiting_approval_are_refused(site: Site) -> None:
    token = site.add_client("dev-asks", "--policy", "approve")
    with site.http(token) as http:
        first = http.post("/api/v1/csr", json={"csr": make_csr(["off.example.org"])})
        assert first.status_code == 202 and first.json()["state"] == "awaiting-approval"
        second = http.post("/api/v1/csr", json={"csr": make_csr(["off2.example.org"])})
        assert second.status_code == 429, second.text
        assert "awaiting an admin's approval" in second.json()["detail"]
        assert "client_approval_requests" in second.json()["detail"]
        assert int(second.headers["retry-after"]) > 0
    waiting = site.cli.json("approvals", "list")
    assert [r["names"] for r in waiting] == [["off.example.org"]]
