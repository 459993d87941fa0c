"""Devices renew their certificates (issue 14): a fresh CSR for the same names renews
the client's certificate (the same ID, the old one into the history), the scheduler
leaves a device-renewed certificate to its device and tells it over its websocket when
renewal is due, or renews it itself where the device opted in with `renewal: broker`;
a client orders with its own ACME account; a client sees only its own certificates and
requests. Against Pebble validating the broker's HTTP-01 responder for real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import make_cli
from tests.integration.test_device_csr import Site as DeviceSite
from tests.integration.test_device_csr import last_line, make_csr, spki
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, stop_serve, wait_until


class Site(DeviceSite):
    """test_device_csr's site, and a look into the store."""

    def broker(self) -> Any:
        """The broker on the same store, in this process: to look at orders, and to let
        time pass for a certificate (its renewal moment moved into the past)."""
        from certbroker.config import load_settings
        from certbroker.wiring import build

        return build(load_settings(environ=self.cli.env))

    def orders_of(self, cert_id: int) -> int:
        return len(self.broker().repo.orders_of(cert_id))

    def make_due(self, cert_id: int) -> None:
        from sqlalchemy import update

        from certbroker.store.schema import certificates

        with self.broker().repo.engine.begin() as conn:
            conn.execute(
                update(certificates)
                .where(certificates.c.id == cert_id)
                .values(renew_at=datetime.now(UTC) - timedelta(minutes=1))
            )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("renewing") / "data", pebble)
    cli.register("main")

    def client(name: str, *extra: str) -> str:
        return last_line(cli("client", "add", name, *extra).stdout)

    tokens = {
        "gw": client("gw", "--allow", "*.dev.example.com", "--account", "main"),
        "other": client("other", "--allow", "*.dev.example.com", "--account", "main"),
        "solo": client("solo", "--allow", "*.solo.example.com"),
        "operator": last_line(cli("token", "create", "--name", "ops", "--role", "operator").stdout),
    }
    # The scheduler looks every half second, so a due certificate is seen at once.
    serve = start_api(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        yield Site(cli, serve, tokens)
    finally:
        stop_serve(serve)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def obtain(site: Site, who: str, key: Any, names: list[str], **extra: str) -> dict[str, Any]:
    """POST a CSR and wait for its request to end: the final state."""
    with site.as_(who) as client:
        posted = client.post("/api/v1/csr", json={"csr": make_csr(key, names), **extra})
        assert posted.status_code == 202, posted.text
        req_id = posted.json()["id"]
        found: dict[str, Any] = {}

        def ended() -> bool:
            found.update(client.get(f"/api/v1/csr/{req_id}").json())
            return found["state"] not in ("pending",)

        wait_until(f"request {req_id}", ended, serve=site.serve, timeout=120)
    assert found["state"] == "valid", found
    return found


def leaf_of(state: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificates(state["chain"].encode())[0]


def test_a_fresh_csr_for_the_same_names_renews_the_devices_certificate(site: Site) -> None:
    names = ["r1.dev.example.com", "www.r1.dev.example.com"]
    first_key, second_key = new_key(), new_key()
    first = obtain(site, "gw", first_key, names)
    cert_id = first["certificate_id"]
    assert first["renewed_by"] == "device"  # the client's default, as innovaphone's devices
    renew_at = datetime.fromisoformat(first["renew_at"])
    assert renew_at < datetime.fromisoformat(first["not_after"])
    orders = site.orders_of(cert_id)

    # The same CSR again before renewal is due (a device that restarted): the
    # certificate it has, and nothing ordered.
    again = obtain(site, "gw", first_key, list(reversed(names)))
    assert again["certificate_id"] == cert_id and again["serial"] == first["serial"]
    assert site.orders_of(cert_id) == orders

    # A fresh key for the same names: the same certificate, renewed for the new key.
    renewed = obtain(site, "gw", second_key, names)
    assert renewed["certificate_id"] == cert_id
    assert renewed["serial"] != first["serial"]
    assert spki(leaf_of(renewed).public_key()) == spki(second_key.public_key())
    assert site.orders_of(cert_id) == orders + 1
    shown = site.cli.json("cert", "show", str(cert_id))
    assert shown["serial"] == renewed["serial"]
    assert [h["serial"] for h in shown["history"]] == [first["serial"]]
    with site.as_("gw") as gw:
        # The earlier requests are done with: a later CSR renewed their certificate.
        assert gw.get(f"/api/v1/csr/{first['id']}").json()["state"] == "superseded"
        assert gw.get(f"/api/v1/csr/{again['id']}").json()["state"] == "superseded"

        # While a renewal runs, another CSR for those names waits its turn: 409, unstored.
        third = gw.post("/api/v1/csr", json={"csr": make_csr(new_key(), names)})
        assert third.status_code == 202, third.text
        fourth = gw.post("/api/v1/csr", json={"csr": make_csr(new_key(), names)})
        assert fourth.status_code == 409, fourth.text
        assert "being renewed already" in fourth.json()["detail"]
        wait_until(
            "the third key's certificate",
            lambda: gw.get(f"/api/v1/csr/{third.json()['id']}").json()["state"] == "valid",
            serve=site.serve,
            timeout=120,
        )
        mine = [r["id"] for r in gw.get("/api/v1/csr").json()]
    assert mine[:4] == [third.json()["id"], renewed["id"], again["id"], first["id"]]


def test_the_scheduler_leaves_the_device_to_renew_and_tells_it_when(site: Site) -> None:
    from websockets.sync.client import connect

    key, opted_key = new_key(), new_key()
    mine = obtain(site, "gw", key, ["r2.dev.example.com"])
    opted = obtain(site, "gw", opted_key, ["r3.dev.example.com"], renewal="broker")
    assert opted["renewed_by"] == "broker"
    mine_orders = site.orders_of(mine["certificate_id"])

    site.make_due(mine["certificate_id"])
    site.make_due(opted["certificate_id"])
    with site.as_("gw") as gw:

        def opted_serial() -> str:
            return str(gw.get(f"/api/v1/csr/{opted['id']}").json().get("serial"))

        # The broker renews the one whose device opted in, with the CSR on file ...
        wait_until("the broker's renewal", lambda: opted_serial() != opted["serial"],
                   serve=site.serve, timeout=120)  # fmt: skip
        after = gw.get(f"/api/v1/csr/{opted['id']}").json()
    assert spki(leaf_of(after).public_key()) == spki(opted_key.public_key())
    # ... and left the other to its device, though the same ticks saw it due.
    assert site.orders_of(mine["certificate_id"]) == mine_orders

    url = api_url(site.cli).replace("http://", "ws://") + "/api/v1/csr/ws"
    headers = {"Authorization": f"Bearer {site.tokens['gw']}"}
    theirs = {"Authorization": f"Bearer {site.tokens['other']}"}
    with (
        connect(url, additional_headers=headers, open_timeout=10) as socket,
        connect(url, additional_headers=theirs, open_timeout=10) as bystander,
    ):
        # Another client's socket, open all along, is told nothing of gw's: it looks for
        # due renewals on connecting, before it reads, so an answer to its own message
        # comes after anything it were told.
        bystander.send("not json")
        assert json.loads(bystander.recv(timeout=30))["error"]["status"] == 400
        told = json.loads(socket.recv(timeout=30))
        assert told["renew"]["certificate_id"] == mine["certificate_id"]
        assert told["renew"]["names"] == ["r2.dev.example.com"]
        fresh = new_key()
        socket.send(json.dumps({"csr": make_csr(fresh, ["r2.dev.example.com"])}))
        states = [json.loads(socket.recv(timeout=120))]
        while states[-1]["state"] not in ("valid", "failed"):
            states.append(json.loads(socket.recv(timeout=120)))
        # ... nor any of the states gw's socket was sent meanwhile.
        bystander.send("not json")
        assert json.loads(bystander.recv(timeout=30))["error"]["status"] == 400
    assert states[0]["state"] == "pending" and states[-1]["state"] == "valid"
    assert states[-1]["certificate_id"] == mine["certificate_id"]
    assert spki(leaf_of(states[-1]).public_key()) == spki(fresh.public_key())


def test_a_client_orders_with_its_own_account(site: Site) -> None:
    site.cli.register("second")  # two accounts now: "the only one" is no more
    with site.as_("solo") as solo:
        refused = solo.post(
            "/api/v1/csr", json={"csr": make_csr(new_key(), ["a.solo.example.com"])}
        )
        assert refused.status_code == 422, refused.text
        assert "client set solo --account" in refused.json()["detail"]
    site.cli("client", "set", "solo", "--account", "second")
    assert site.cli.json("client", "show", "solo")["account"] == "second"
    got = obtain(site, "solo", new_key(), ["a.solo.example.com"])
    shown = site.cli.json("cert", "show", str(got["certificate_id"]))
    assert shown["account"] == "second"

    busy = site.cli("account", "delete", "second", check=False)
    assert busy.returncode == 2
    deleted = site.cli("client", "set", "solo", "--account", "nope", check=False)
    assert deleted.returncode != 0 and "nope" in deleted.stderr


def test_a_client_sees_only_its_own_certificates_and_requests(site: Site) -> None:
    ours = obtain(site, "gw", new_key(), ["mine.dev.example.com"])
    # Another client's CSR for the very names gw has a certificate for: a certificate
    # of its own, not a renewal of gw's.
    theirs = obtain(site, "other", new_key(), ["mine.dev.example.com"])
    assert theirs["certificate_id"] != ours["certificate_id"]
    assert theirs["serial"] != ours["serial"]
    with site.as_("gw") as gw, site.as_("other") as other:
        listed = gw.get("/api/v1/client/certificates").json()
        ids = [c["certificate_id"] for c in listed]
        assert ours["certificate_id"] in ids and theirs["certificate_id"] not in ids
        assert all("chain" not in c or c["chain"] is None for c in listed)
        one = gw.get(f"/api/v1/client/certificates/{ours['certificate_id']}")
        assert one.status_code == 200 and one.json()["serial"] == ours["serial"]  # unchanged
        assert leaf_of(one.json()).serial_number == leaf_of(ours).serial_number
        assert gw.get(f"/api/v1/csr/{ours['id']}").json()["state"] == "valid"  # not superseded
        their_ids = [c["certificate_id"] for c in other.get("/api/v1/client/certificates").json()]
        assert theirs["certificate_id"] in their_ids and ours["certificate_id"] not in their_ids
        assert gw.get(f"/api/v1/client/certificates/{theirs['certificate_id']}").status_code == 404
        assert other.get(f"/api/v1/csr/{ours['id']}").status_code == 404
        assert ours["id"] not in [r["id"] for r in other.get("/api/v1/csr").json()]
        with site.as_("operator") as operator:  # an operator's token is not a client's
            assert operator.get("/api/v1/client/certificates").status_code == 401
