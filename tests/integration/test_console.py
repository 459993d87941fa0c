"""The web console in a real browser: Debian's Chromium through Playwright, against
`certbroker serve` and a real Pebble. Log in, register an ACME account, request a
certificate and watch it become valid without a reload, download the PKCS#12, revoke
it; and what a viewer, a forged form and a password guesser are refused."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Cli, make_cli
from tests.support.browser import csrf_of, http_gate, log_in, new_page
from tests.support.pebble import PebbleServer
from tests.support.ports import free_port
from tests.support.serve import api_url, start_api, stop_serve

ADMIN_PASSWORD = "admin-password-1"
VIEWER_PASSWORD = "viewer-password-1"
P12_PASSWORD = "p12-secret-pass"
WAIT_MS = 60_000


# -- an admin, from an empty broker to a revoked certificate -----------------------------


def test_admin_registers_requests_watches_live_downloads_and_revokes(
    cli: Cli, pebble: PebbleServer, browser: Browser
) -> None:
    responder_port = free_port()
    serve = start_api(
        cli,
        CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD,
        CERTBROKER_WORKER_PROCESSES="1",
        CERTBROKER_HTTP01_PORT=str(responder_port),
    )
    page = new_page(browser, api_url(cli))
    try:
        with http_gate(pebble.http_port, responder_port) as gate:
            # Every page needs a session: the dashboard sends us to the log-in form.
            log_in(page, "admin", ADMIN_PASSWORD, "/accounts")
            assert page.url.endswith("/accounts")
            expect(page.locator("h1")).to_have_text("ACME accounts")

            # Register; without the terms checkbox the error sits next to it and the
            # form keeps what was typed.
            page.check("#preset-custom")
            page.fill("#directory_url", pebble.directory_url)
            page.fill("#emails", "ops@example.com")
            page.fill("#name", "pebble")
            page.fill("#ca_bundle", pebble.ca_bundle.read_text())
            page.click("#register")
            expect(page.locator("#agree_tos-error")).to_contain_text("terms of service")
            expect(page.locator("#directory_url")).to_have_value(pebble.directory_url)
            page.check("#agree_tos")
            page.click("#register")
            expect(page.locator(".flash")).to_contain_text("registered")
            expect(page.locator("#accounts")).to_contain_text("pebble")

            # Request, with a keystore type and password kept for downloads.
            name = f"console-{secrets.token_hex(4)}.example.com"
            page.click("nav >> text=Certificates")
            page.click("#request-link")
            page.fill("#label", "Console portal")
            page.fill("#description", "Made in the browser test")
            page.fill("#names", f"{name}\nwww.{name}")
            page.select_option("#keystore_type", "pkcs12")
            page.fill("#keystore_password", P12_PASSWORD)
            page.click("#request-submit")
            page.wait_for_url(re.compile(r"/certificates/\d+$"))
            cert_id = int(page.url.rsplit("/", 1)[1])

            # Pebble cannot validate before the gate opens: the page shows it pending,
            # then valid, fed by the progress stream, with no navigation in between.
            expect(page.locator("#status")).to_have_text("pending")
            expect(page.locator("#live")).to_be_visible()
            page.evaluate("window.__stillTheSamePage = 'yes'")
            gate.open()
            expect(page.locator("#status")).to_have_text("valid", timeout=WAIT_MS)
            assert page.evaluate("window.__stillTheSamePage") == "yes"
            expect(page.locator("#order-state")).to_have_text("valid")
            serial = page.locator("[data-fact=serial]")
            expect(serial).to_have_text(re.compile(r"^[0-9a-f]+$"))
            expect(page.locator("#download-form")).to_be_visible()
            assert page.evaluate("window.__stillTheSamePage") == "yes"

        # The PKCS#12, with the password kept with the certificate.
        page.select_option("#format", "pkcs12")
        with page.expect_download() as download_info:
            page.click("#download")
        data = Path(download_info.value.path()).read_bytes()
        key, leaf, _chain = pkcs12.load_key_and_certificates(data, P12_PASSWORD.encode())
        assert key is not None and leaf is not None
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == sorted([name, f"www.{name}"])
        assert format(leaf.serial_number, "x") == serial.text_content()

        # Revoke with a reason: the page says so, and so does the CA.
        page.select_option("#reason", "keyCompromise")
        page.click("#revoke")
        page.wait_for_url(re.compile(rf"/certificates/{cert_id}$"))
        expect(page.locator("#status")).to_have_text("revoked")
        expect(page.locator("#revoked")).to_contain_text("keyCompromise")
        status = pebble.cert_status(leaf.serial_number)
        assert status["Status"] == "Revoked" and status.get("Reason") == 1

        # The dashboard counts it, and the events page tells the story.
        page.goto("/")
        expect(page.locator("#count-revoked")).to_have_text("1")
        page.goto(f"/events?certificate={cert_id}")
        expect(page.locator("#events")).to_contain_text("issued")
    finally:
        page.context.close()
        stop_serve(serve)


# -- a broker with one valid certificate, for the refusals --------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Cli]:
    """`serve` with an admin, a viewer `v` and a valid certificate 1 (issued by the CLI
    beforehand; serve's own responder is on a port of its own, as the first test's gate
    takes Pebble's)."""
    cli = make_cli(tmp_path_factory.mktemp("console") / "data", pebble)
    cli.register()
    cli("cert", "request", "viewer-site.example.com", "--wait")
    serve = start_api(
        cli,
        CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD,
        CERTBROKER_WORKER_PROCESSES="1",
        CERTBROKER_HTTP01_PORT=str(free_port()),
    )
    try:
        # After serve made `admin` (it does so only while there is no user at all).
        cli(
            "user", "add", "v", "--role", "viewer", "--password-stdin", input=VIEWER_PASSWORD + "\n"
        )
        yield cli
    finally:
        stop_serve(serve)


@pytest.fixture
def site_page(site: Cli, browser: Browser) -> Iterator[Page]:
    page = new_page(browser, api_url(site))
    try:
        yield page
    finally:
        page.context.close()


def test_a_viewer_sees_certificates_but_no_controls_and_no_keys(site: Cli, site_page: Page) -> None:
    page = site_page
    log_in(page, "v", VIEWER_PASSWORD, "/certificates")
    expect(page.locator("#certificates")).to_contain_text("viewer-site.example.com")
    expect(page.locator("#certificates .status").first).to_have_text("valid")
    expect(page.locator("#request-link")).to_have_count(0)
    expect(page.locator("nav >> text=Users")).to_have_count(0)

    page.click("text=viewer-site.example.com")
    expect(page.locator("#status")).to_have_text("valid")
    for control in ("#revoke-form", "#delete-form", "#renew", "#disable"):
        expect(page.locator(control)).to_have_count(0)
    offered = page.locator("#format option").evaluate_all("os => os.map(o => o.value)")
    assert "fullchain" in offered
    assert not {"pkcs12", "jks", "combined", "pem"} & set(offered)

    # Forged posts with the session's own valid CSRF token: still refused.
    csrf = csrf_of(page)
    refused = page.request.post(
        "/certificates/1/revoke", form={"csrf_token": csrf, "reason": "keyCompromise"}
    )
    assert refused.status == 403
    for fmt in ("pkcs12", "combined", "pem"):
        answer = page.request.post(
            "/certificates/1/download",
            form={"csrf_token": csrf, "format": fmt, "password": "whatever-1"},
        )
        assert answer.status == 403, fmt
        assert b"PRIVATE KEY" not in answer.body()
    for path in ("/certificates/1/delete", "/certificates/1/renew", "/certificates/new"):
        assert page.request.post(path, form={"csrf_token": csrf}).status == 403, path
    assert page.request.get("/certificates/new").status == 403
    assert page.request.get("/users").status == 403

    # What a viewer may have: the chain, without the key.
    chain = page.request.post(
        "/certificates/1/download", form={"csrf_token": csrf, "format": "fullchain"}
    )
    assert chain.status == 200
    assert b"BEGIN CERTIFICATE" in chain.body() and b"PRIVATE KEY" not in chain.body()
    assert site.json("cert", "show", "1")["status"] == "valid"


def test_a_form_without_the_sessions_csrf_token_is_refused(site: Cli, site_page: Page) -> None:
    page = site_page
    log_in(page, "admin", ADMIN_PASSWORD, "/certificates/1")
    expect(page.locator("#revoke-form")).to_be_visible()
    (session,) = [c for c in page.context.cookies() if c["name"] == "certbroker_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/"
    assert not session["secure"]  # plain HTTP here; Secure behind TLS
    for form in (
        {"csrf_token": "not-the-token", "reason": "superseded"},
        {"reason": "superseded"},
    ):
        answer = page.request.post("/certificates/1/revoke", form=form)
        assert answer.status == 403
        assert "CSRF" in answer.text()
    assert (
        page.request.post("/users", form={"name": "x", "password": "long-enough-1"}).status == 403
    )
    assert site.json("cert", "show", "1")["status"] == "valid"

    # Log-out is a form too, and it ends the session.
    page.click("text=Log out")
    page.wait_for_url(re.compile(r"/login"))
    page.goto("/certificates")
    assert "/login?next=%2Fcertificates" in page.url


def test_log_in_is_throttled_after_five_wrong_passwords(site: Cli, site_page: Page) -> None:
    page = site_page
    page.goto("/")
    assert "/login" in page.url
    for _ in range(5):
        page.fill("#name", "throttled-user")
        page.fill("#password", "wrong-password")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    page.fill("#name", "throttled-user")
    page.fill("#password", "wrong-password")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("Too many failed log-ins")


def test_the_request_form_shows_errors_next_to_fields_and_keeps_the_input(
    site: Cli, site_page: Page
) -> None:
    page = site_page
    log_in(page, "admin", ADMIN_PASSWORD, "/certificates/new")
    page.fill("#label", "Kept label")
    page.fill("#names", "good.example.com\nbad..example.com")
    page.fill("#country", "D1")
    page.click("#request-submit")
    expect(page.locator("#names-error")).to_contain_text("bad..example.com")
    expect(page.locator("#country-error")).to_contain_text("two-letter")
    expect(page.locator("#label")).to_have_value("Kept label")
    expect(page.locator("#names")).to_have_value("good.example.com\nbad..example.com")
    assert len(site.json("cert", "list")) == 1  # nothing was stored


def test_dns_provider_fields_load_and_pages_fit_a_phone(site: Cli, browser: Browser) -> None:
    context = browser.new_context(base_url=api_url(site), viewport={"width": 375, "height": 812})
    page = context.new_page()
    try:
        log_in(page, "admin", ADMIN_PASSWORD, "/dns-accounts")
        page.select_option("#pick-provider", "rfc2136")
        expect(page.locator("#opt-tsig_key_name")).to_be_visible()
        expect(page.locator("#opt-tsig_secret")).to_have_attribute("type", "password")
        for path in ("/", "/certificates", "/certificates/1", "/accounts", "/events", "/users"):
            page.goto(path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{path} is {width} px wide at phone width"
            wide = page.evaluate(
                "[...document.querySelectorAll('table.cards')]"
                ".filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth).length"
            )
            assert wide == 0, f"{path}: a table does not collapse into cards"
        # Keyboard: the first Tab reaches the skip link, which leads to the content.
        page.goto("/certificates")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
    finally:
        context.close()


def test_the_api_docs_render_offline_and_try_calls_with_a_token(site: Cli, site_page: Page) -> None:
    """Swagger UI from certbroker itself (the browser reaches nothing else here)."""
    page = site_page
    outside: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith(api_url(site)) else outside.append(r.url),
    )
    page.goto("/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("certbroker")
    expect(page.locator(".swagger-ui")).to_contain_text("/api/v1/certificates")
    expect(page.locator(".swagger-ui .btn.authorize")).to_be_visible()  # Bearer tokens
    assert outside == []
