"""Clients and approvals in the console, in a real browser against `certbroker serve` and
Pebble: the token an admin gets on the page works for a device's CSR (and only for the
names on its list), changes to the list and a new token take effect at once, requests
waiting for approval are approved or denied there, and an operator is refused all of it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Cli, make_cli
from tests.support.browser import csrf_of, log_in, new_page
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, stop_serve, wait_until

ADMIN_PASSWORD = "clients-admin-pw-1"
OPERATOR_PASSWORD = "clients-operator-pw-1"
KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass
class Site:
    cli: Cli
    serve: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return api_url(self.cli)

    def post_csr(self, token: str, *names: str) -> httpx.Response:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=True
            )
            .sign(KEY, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        return httpx.post(
            self.url + "/api/v1/csr",
            json={"csr": csr},
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=30,
        )

    def csr_state(self, token: str, request_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(
            self.url + f"/api/v1/csr/{request_id}",
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=30,
        ).json()
        return answer


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("console-clients") / "data", pebble)
    cli.register()
    serve = start_api(cli, CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD)  # the first user
    try:
        cli("user", "add", "olivia", "--role", "operator", "--password-stdin",
            input=OPERATOR_PASSWORD + "\n")  # fmt: skip
        yield Site(cli, serve)
    finally:
        stop_serve(serve)


@pytest.fixture
def page(site: Site, browser: Browser) -> Iterator[Page]:
    opened = new_page(browser, site.url)
    try:
        yield opened
    finally:
        opened.context.close()


def add_client(page: Page, name: str, allow: str, policy: str = "deny") -> str:
    """Add a client on /clients; the token the answer page shows."""
    page.goto("/clients")
    page.fill("#name", name)
    page.fill("#allow", allow)
    page.select_option("#policy", policy)
    page.click("#add-client")
    expect(page.locator("#created-h")).to_contain_text(name)
    token = page.locator("#new-token").inner_text().strip()
    assert token.startswith("cbc_")
    return token


def manage(page: Page, name: str) -> Any:
    box = page.locator(f"#manage-{name}")
    if box.get_attribute("open") is None:
        box.locator("summary").click()
    return box


def test_an_admin_adds_changes_rotates_and_deletes_a_client(site: Site, page: Page) -> None:
    log_in(page, "admin", ADMIN_PASSWORD, "/clients")
    expect(page.locator("h1")).to_have_text("Clients")

    # A bad name: the error sits next to the field, what was typed stays.
    page.fill("#name", "not a name!")
    page.fill("#allow", "lb1.example.org")
    page.click("#add-client")
    expect(page.locator("#name-error")).to_contain_text("client name")
    expect(page.locator("#allow")).to_have_value("lb1.example.org")

    token = add_client(page, "lb1", "lb1.example.org")
    expect(page.locator("#clients")).to_contain_text(token[:10])
    page.goto("/clients")  # shown once: never again
    expect(page.locator("#new-token")).to_have_count(0)
    expect(page.locator("#client-lb1")).to_contain_text("lb1.example.org")

    assert site.post_csr(token, "lb1.example.org").status_code == 202
    off = site.post_csr(token, "lb2.example.org")
    assert off.status_code == 403 and "lb2.example.org" in off.json()["detail"]
    expect(page.locator("#client-lb1")).to_contain_text("never")  # until the page reloads
    page.reload()
    expect(page.locator("#client-lb1")).to_contain_text("from 127.0.0.1")

    # The list grows in the console, and the name off it is allowed at once.
    box = manage(page, "lb1")
    box.locator("textarea[name=add]").fill("not/a pattern")
    box.locator(".save-allow").click()
    expect(page.locator("#manage-lb1 .field-error")).to_contain_text("pattern")
    box = manage(page, "lb1")
    box.locator("textarea[name=add]").fill("lb2.example.org")
    box.locator(".save-allow").click()
    expect(page.locator(".flash")).to_contain_text("saved")
    expect(page.locator("#client-lb1 .allows")).to_have_text("lb1.example.org, lb2.example.org")
    assert site.post_csr(token, "lb2.example.org").status_code == 202

    # Who renews its certificates, and the ACME account it orders with.
    expect(page.locator("#client-lb1")).to_contain_text("by the device")
    box = manage(page, "lb1")
    box.locator("select[name=renewal]").select_option("broker")
    box.locator("select[name=account]").select_option("main")
    box.locator(".save-allow").click()
    expect(page.locator(".flash")).to_contain_text("saved")
    expect(page.locator("#client-lb1")).to_contain_text("by the broker")
    shown = site.cli.json("client", "show", "lb1")
    assert shown["renewal"] == "broker" and shown["account"] == "main"

    # A new token: shown once, the old one refused at once.
    manage(page, "lb1").locator("button.rotate").click()
    expect(page.locator("#created-h")).to_contain_text("New token")
    newer = page.locator("#new-token").inner_text().strip()
    assert newer.startswith("cbc_") and newer != token
    assert site.post_csr(token, "lb1.example.org").status_code == 401
    assert site.post_csr(newer, "lb1.example.org").status_code == 202

    # Disabled, it is refused; deleting needs its name typed.
    page.goto("/clients")
    manage(page, "lb1").locator("button.toggle").click()
    expect(page.locator("#client-lb1")).to_contain_text("disabled")
    refused = site.post_csr(newer, "lb1.example.org")
    assert refused.status_code == 401 and "disabled" in refused.json()["detail"]
    box = manage(page, "lb1")
    box.locator("input[name=confirm]").fill("lb2")
    box.locator("button.danger").click()
    expect(page.locator("#manage-lb1 .field-error")).to_contain_text("lb1")
    box = manage(page, "lb1")
    box.locator("input[name=confirm]").fill("lb1")
    box.locator("button.danger").click()
    expect(page.locator(".flash")).to_contain_text("deleted")
    expect(page.locator("#client-lb1")).to_have_count(0)


def test_an_admin_approves_and_denies_in_the_console(site: Site, page: Page) -> None:
    log_in(page, "admin", ADMIN_PASSWORD, "/clients")
    token = add_client(page, "asks", "*.dev.example.org", policy="approve")
    expect(page.locator("#client-asks")).to_contain_text("approve")
    first = site.post_csr(token, "kiosk.elsewhere.example.org")
    second = site.post_csr(token, "till.elsewhere.example.org")
    for answer in (first, second):
        assert answer.status_code == 202, answer.text
        assert answer.json()["state"] == "awaiting-approval"
    first_id, second_id = first.json()["id"], second.json()["id"]

    page.goto("/approvals")
    expect(page.locator("#waiting-count")).to_have_text("2")
    expect(page.locator(f"#request-{first_id}")).to_contain_text("kiosk.elsewhere.example.org")
    expect(page.locator(f"#request-{second_id}")).to_contain_text("asks")

    page.click(f"#approve-{first_id}")
    expect(page.locator(".flash")).to_contain_text(f"Request {first_id} approved")
    expect(page.locator(f"#request-{first_id}")).to_have_count(0)
    expect(page.locator("#waiting-count")).to_have_text("1")

    page.click(f"#deny-{second_id}")  # no reason: refused, next to the field
    expect(page.locator(f"#reason-{second_id}-error")).to_be_visible()
    page.fill(f"#reason-{second_id}", "not ours")
    page.click(f"#deny-{second_id}")
    expect(page.locator(".flash")).to_contain_text(f"Request {second_id} denied: not ours")
    expect(page.locator("#none-waiting")).to_be_visible()
    expect(page.locator("#waiting-count")).to_have_count(0)

    denied = site.csr_state(token, second_id)
    assert denied["state"] == "denied" and denied["reason"] == "not ours"
    wait_until("the approved certificate",
               lambda: site.csr_state(token, first_id)["state"] == "valid",
               serve=site.serve)  # fmt: skip
    assert "BEGIN CERTIFICATE" in site.csr_state(token, first_id)["chain"]


def test_an_operator_sees_no_clients_nor_approvals(site: Site, page: Page) -> None:
    log_in(page, "olivia", OPERATOR_PASSWORD, "/")
    expect(page.locator("h1")).to_be_visible()
    expect(page.locator("nav a[href='/clients']")).to_have_count(0)
    expect(page.locator("nav a[href='/approvals']")).to_have_count(0)
    for path in ("/clients", "/approvals"):
        assert page.request.get(path).status == 403, path
    csrf = csrf_of(page)
    for path, form in (
        ("/clients", {"name": "evil", "allow": "*.example.org", "policy": "deny"}),
        ("/clients/asks/allow", {"add": "*.example.org"}),
        ("/clients/asks/rotate", {}),
        ("/clients/asks/delete", {"confirm": "asks"}),
        ("/approvals/1/approve", {}),
        ("/approvals/1/deny", {"reason": "no"}),
    ):
        assert page.request.post(path, form={"csrf_token": csrf, **form}).status == 403, path
    assert all(c["name"] != "evil" for c in site.cli.json("client", "list"))
