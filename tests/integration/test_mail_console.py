"""The console's mail page and alarm acknowledgement, in Debian's Chromium: an admin sets
the SMTP server (a real aiosmtpd with STARTTLS) and sends a test mail; an operator
acknowledges a failing certificate's alarm and may not change mail settings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Cli, make_cli
from tests.support.browser import csrf_of, log_in, new_page
from tests.support.pebble import PebbleServer
from tests.support.ports import free_port
from tests.support.serve import api_url, start_api, stop_serve
from tests.support.smtp import SmtpServer

ADMIN_PASSWORD = "admin-pass-0123456789"
OPERATOR_PASSWORD = "operator-pass-0123456789"


@dataclass
class Site:
    cli: Cli
    smtp: SmtpServer

    @property
    def url(self) -> str:
        return api_url(self.cli)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    pebble: PebbleServer,
    smtp: SmtpServer,
) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("mail-console") / "data", pebble)
    cli.register()
    failed = cli("cert", "request", "console-fails.example.com", "--wait",
                 env={"CERTBROKER_HTTP01_PORT": str(free_port())}, check=False)  # fmt: skip
    assert failed.returncode == 1
    serve = start_api(
        cli,
        CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD,
        CERTBROKER_WORKER_PROCESSES="1",
        CERTBROKER_SMTP_CA_FILE=str(smtp.ca_file),
        CERTBROKER_SCHEDULER_INTERVAL="3600",  # no retry of the failing certificate meanwhile
    )
    try:
        cli("user", "add", "op", "--role", "operator", "--password-stdin",
            input=OPERATOR_PASSWORD + "\n")  # fmt: skip
        yield Site(cli, smtp)
    finally:
        stop_serve(serve)


@pytest.fixture
def page(site: Site, browser: Browser) -> Iterator[Page]:
    page = new_page(browser, site.url)
    try:
        yield page
    finally:
        page.context.close()


def test_an_admin_sets_the_smtp_server_and_sends_a_test_mail(site: Site, page: Page) -> None:
    site.smtp.clear()
    log_in(page, "admin", ADMIN_PASSWORD, "/mail")
    page.select_option("#security", "starttls")
    page.fill("#host", "127.0.0.1")
    page.fill("#port", "70000")
    page.click("#save-mail")
    expect(page.locator("#port-error")).to_be_visible()  # a 422 naming the field
    page.fill("#port", str(site.smtp.port))
    page.fill("#user", site.smtp.user)
    page.fill("#password", site.smtp.password)
    page.fill("#sender", "pki@example.com")
    page.click("#save-mail")
    expect(page.locator("main > .flash")).to_contain_text("Mail settings saved.")
    expect(page.locator("#password-hint")).to_contain_text("A password is set")
    assert site.smtp.password not in page.content()

    page.fill("#to", "ops@example.com")
    page.click("#send-test")
    expect(page.locator("main > .flash")).to_contain_text("250 2.0.0 Ok: queued as")
    ((meta, message),) = site.smtp.mails()
    assert meta["tls"] and meta["rcpt_tos"] == ["ops@example.com"]
    assert "pki@example.com" in str(message["From"])

    # Only what was changed is stored; the rest still follows the configuration.
    stored = site.cli.json("notify", "settings")["stored"]
    assert stored == ["host", "password", "port", "sender", "user"]


def test_an_operator_acknowledges_an_alarm_and_cannot_change_mail(site: Site, page: Page) -> None:
    log_in(page, "op", OPERATOR_PASSWORD, "/alarms")
    form = page.locator("#ack-1")
    form.locator("input.days").fill("2")
    form.locator("input.reason").fill("the DNS team moves the zone on Monday")
    with page.expect_navigation():
        form.locator("button").click()
    expect(page.locator("main > .flash")).to_contain_text("acknowledged until")
    expect(page.locator("#alarms .acknowledged")).to_contain_text("muted until")
    expect(page.locator("#alarms")).to_contain_text("by op: the DNS team moves the zone")
    (alarm,) = site.cli.json("alarms")
    assert alarm["acknowledged"]["by"] == "op"

    page.goto("/certificates/1")
    expect(page.locator("#alarm-acknowledged")).to_contain_text("Acknowledged by op until")
    page.fill("#recipients", "dns-team@example.com\nnot an address")
    page.click("#save-recipients")
    expect(page.locator("main > .flash").first).to_contain_text("is not an e-mail address")
    page.fill("#recipients", "dns-team@example.com\noncall@example.com")
    page.click("#save-recipients")
    expect(page.locator("#recipients-now")).to_contain_text(
        "dns-team@example.com, oncall@example.com"
    )
    assert site.cli.json("cert", "show", "1")["notify_to"] == [
        "dns-team@example.com",
        "oncall@example.com",
    ]

    # The mail settings are an admin's, as over the API (GET /api/v1/notify/settings).
    assert page.goto("/mail").status == 403  # type: ignore[union-attr]
    # (Whatever the admin's test set, or not: with xdist it may run on another worker.)
    before = site.cli.json("notify", "settings")
    refused = httpx.post(
        site.url + "/mail",
        data={"csrf_token": csrf_of(page), "host": "evil.example.com"},
        cookies={c["name"]: c["value"] for c in page.context.cookies()},
        trust_env=False,
    )
    assert refused.status_code == 403
    assert site.cli.json("notify", "settings") == before
