"""The console and API over HTTPS with a certificate certbroker itself manages: chosen
in the settings, served after a restart, and served renewed without one."""

from __future__ import annotations

import socket
import ssl

import httpx
from cryptography import x509

from tests.conftest import Cli
from tests.support.serve import api_url, start_api, start_serve, stop_serve, wait_until


def served_serial(address: str) -> int:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # Pebble's chain; the serial is what is compared
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="console.example.com") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_the_console_serves_its_own_certificate_and_follows_its_renewal(cli: Cli) -> None:
    cli.register()
    cli("cert", "request", "console.example.com", "--wait")
    first_serial = int(cli.json("cert", "show", "1")["serial"], 16)
    secret = cli("token", "create", "--name", "ops", "--role", "admin").stdout.split()[-1]
    auth = {"Authorization": f"Bearer {secret}"}

    serve = start_api(cli, CERTBROKER_ADMIN_PASSWORD="tls-test-password")
    try:
        chosen = httpx.put(
            api_url(cli) + "/api/v1/settings",
            json={"console_certificate_id": 1, "notify_to": [], "renew_before_days": None},
            headers=auth,
            trust_env=False,
        )
        assert chosen.status_code == 200, chosen.text
    finally:
        stop_serve(serve)

    address = cli.env["CERTBROKER_LISTEN"]
    serve = start_serve(cli, CERTBROKER_SCHEDULER_INTERVAL="0.5")
    try:

        def answers_tls() -> bool:
            try:
                return served_serial(address) == first_serial
            except OSError:
                return False

        wait_until("the console over HTTPS", answers_tls, serve=serve)
        # Pebble issued it; what is checked is that it is served, not who signed it.
        with httpx.Client(base_url=f"https://{address}", verify=False, trust_env=False) as api:  # noqa: S501
            assert api.get("/api/v1/certificates", headers=auth).status_code == 200
            plain = httpx.Client(base_url=f"http://{address}", trust_env=False)
            try:
                plain.get("/api/v1/certificates", headers=auth)
                raise AssertionError("plain HTTP was answered on the HTTPS port")
            except httpx.HTTPError:
                pass
            renewed = api.post("/api/v1/certificates/1/renew", headers=auth)
            assert renewed.status_code == 202, renewed.text

        def new_one_served() -> bool:
            return served_serial(address) != first_serial

        wait_until("the renewed certificate to be served", new_one_served, serve=serve)
        assert served_serial(address) == int(cli.json("cert", "show", "1")["serial"], 16)
    finally:
        log = stop_serve(serve)
    assert "console certificate 1 renewed" in log
