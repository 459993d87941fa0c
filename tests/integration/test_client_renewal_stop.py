"""Issue 24: once a name left a client's allow-list, the broker stops renewing the
client's certificate for it, before anything is ordered at the CA, and raises the alarm
users already get for failures, saying why and what to do; a certificate of the same
client whose names are still allowed renews as before. Against Pebble validating the
broker's HTTP-01 responder for real, with `serve`'s scheduler renewing what is due.

(The other ways a client may lose a certificate — disabled, deleted, a certificate
shared by several gateways, names an admin approved — are in
tests/unit/test_client_renewal_stop.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import make_cli
from tests.integration.test_device_csr import last_line
from tests.integration.test_device_renewal import Site, new_key, obtain
from tests.support.pebble import PebbleServer
from tests.support.serve import start_api, stop_serve, wait_until

KEPT = "keep.dev.example.com"
DROPPED = "shop.dev.example.com"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("client-stop") / "data", pebble)
    cli.register("main")
    token = last_line(
        cli(
            "client", "add", "gw1", "--allow", KEPT, "--allow", DROPPED,
            "--renewal", "broker",  # the broker renews with the CSR on file
        ).stdout
    )  # fmt: skip
    # The scheduler looks every half second, so a due certificate is seen at once.
    serve = start_api(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:
        yield Site(cli, serve, {"gw1": token})
    finally:
        stop_serve(serve)


def test_a_name_taken_off_a_clients_list_is_no_longer_renewed(site: Site) -> None:
    cli = site.cli
    dropped = obtain(site, "gw1", new_key(), [DROPPED])
    kept = obtain(site, "gw1", new_key(), [KEPT])
    assert dropped["renewed_by"] == kept["renewed_by"] == "broker"
    dropped_id, kept_id = dropped["certificate_id"], kept["certificate_id"]

    cli("client", "allow", "gw1", "--remove", DROPPED)  # an admin narrows the list
    at_the_ca = site.ca_orders()
    orders = site.orders_of(dropped_id)
    site.make_due(dropped_id)
    site.make_due(kept_id)

    def shown(cert_id: int) -> dict[str, Any]:
        data: dict[str, Any] = cli.json("cert", "show", str(cert_id))
        return data

    wait_until("the still-allowed certificate renewed",
               lambda: shown(kept_id)["serial"] != kept["serial"],
               serve=site.serve, timeout=120)  # fmt: skip
    wait_until("the renewal of the dropped name stopped", lambda: shown(dropped_id)["disabled"],
               serve=site.serve, timeout=60)  # fmt: skip

    # Nothing was ordered at the CA for it: Pebble has the kept certificate's order only.
    assert site.ca_orders() == at_the_ca + 1
    after = shown(dropped_id)
    assert after["serial"] == dropped["serial"]  # the certificate it had, still valid
    assert after["status"] == "valid"
    assert [a["state"] for a in after["attempts"]][-1] == "failed"
    assert site.orders_of(dropped_id) == orders + 1

    # The alarm, as for any failure: `alarms`, `cert show`, the events mail and webhooks
    # are sent for.
    why = f"client 'gw1' no longer allows {DROPPED} (its allow-list: {KEPT}); renewal stopped"
    (alarm,) = [a for a in cli.json("alarms", "--json") if a.get("certificate_id") == dropped_id]
    assert alarm["last_error"].startswith(why), alarm
    assert f"`certbroker cert enable {dropped_id}`" in alarm["last_error"]
    assert after["alarm"]["last_error"] == alarm["last_error"]
    kinds = [e["kind"] for e in cli.json("events", "--cert", str(dropped_id), "--json")]
    assert kinds[-3:] == ["failed", "alarm-raised", "disabled"]
    assert "disabled" in cli("cert", "list").stdout  # `valid, disabled`

    # Renewing it by hand is refused at once, saying why: nothing is ordered.
    refused = cli("cert", "renew", str(dropped_id), check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert f"client 'gw1' no longer allows {DROPPED}" in said, said
    assert site.orders_of(dropped_id) == orders + 1

    # Still stopped at the next ticks, however due it is.
    site.make_due(dropped_id)
    cli("cert", "renew", "--due")  # also what an operator may run by hand
    assert site.orders_of(dropped_id) == orders + 1
    assert shown(dropped_id)["serial"] == dropped["serial"]

    # What the alarm says to do: allow the name again and enable the certificate.
    cli("client", "allow", "gw1", DROPPED)
    cli("cert", "enable", str(dropped_id))
    wait_until("the certificate renewed again",
               lambda: shown(dropped_id)["serial"] != dropped["serial"],
               serve=site.serve, timeout=120)  # fmt: skip
    back = shown(dropped_id)
    assert back["alarm"] is None and back["disabled"] is False
