"""The console's admin pages and its certificates table in a real browser (Debian's
Chromium through Playwright), against one `certbroker serve` on a Pebble whose VA reads
a real BIND: what an operator may and may not do, users, tokens, settings, ACME
accounts (e-mails, key rollover, delete, import, deactivate), DNS accounts (add through
the provider's fields, test, delete), sorting, filtering, searching and paging the
table, and manual DNS-01 with "new challenge" and "verify".

One broker for the whole module, made by the CLI before serve starts: account `main`,
the rfc2136 DNS account `com` (zone example.com), certificates 1 and 2
(a/b.sorted.example.com, issued, 1 renewed afterwards so it expires last), and 55 manual
DNS-01 requests (pNN.page.example.com) that stay pending: serve orders them, then they
wait for a person. Each test makes what else it needs under names of its own, so the
tests hold in any order."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Cli, make_cli
from tests.integration.conftest import COM_KEY, NET_KEY, add_account
from tests.support.browser import csrf_of, log_in, new_page
from tests.support.dns_servers import BindServer
from tests.support.pebble import PebbleServer
from tests.support.ports import free_port
from tests.support.serve import api_url, start_api, stop_serve

ADMIN_PASSWORD = "admin-password-1"
OPERATOR_PASSWORD = "operator-password-1"
PENDING = 55  # more than one page of the table (50 rows)
WAIT_MS = 60_000


@dataclass
class Site:
    cli: Cli
    bind: BindServer
    pebble: PebbleServer
    admin_token: str  # for reading back through the API what the console did

    @property
    def url(self) -> str:
        return api_url(self.cli)

    def api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=30)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, dns_pebble: PebbleServer, bind: BindServer
) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("console-admin") / "data", dns_pebble)
    cli.env["CERTBROKER_DNS_RESOLVERS"] = bind.address  # CNAME look-ups
    cli.env["CERTBROKER_DNS_CHECK_SERVERS"] = bind.address  # propagation, serve's too
    cli.register("main")
    add_account(cli, bind, "com", COM_KEY, "example.com")
    for name in ("a.sorted.example.com", "b.sorted.example.com"):
        cli("cert", "request", name, "--challenge", "dns-01", "--wait")
    time.sleep(1.1)  # Pebble's dates are to the second
    cli("cert", "renew", "1")  # now 1 expires after 2, against the order of the IDs
    batch = "".join(f"p{n:02d}.page.example.com\n" for n in range(PENDING))
    cli(
        "cert", "request", "--from", "-", "--challenge", "dns-01", "--dns-account", "manual",
        input=batch,
    )  # fmt: skip
    token = cli("token", "create", "--name", "test-admin", "--role", "admin").stdout
    serve = start_api(
        cli,
        CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD,
        CERTBROKER_WORKER_PROCESSES="1",
        CERTBROKER_HTTP01_PORT=str(free_port()),
    )
    try:
        cli(
            "user", "add", "op", "--role", "operator", "--password-stdin",
            input=OPERATOR_PASSWORD + "\n",
        )  # fmt: skip
        yield Site(cli, bind, dns_pebble, token.split()[-1])
    finally:
        stop_serve(serve)


@pytest.fixture
def page(site: Site, browser: Browser) -> Iterator[Page]:
    page = new_page(browser, site.url)
    try:
        yield page
    finally:
        page.context.close()


def flash(page: Page) -> Any:
    return page.locator("main > .flash")


def ids_in_table(page: Page) -> list[int]:
    return [int(t) for t in page.locator("#certificates tbody td:first-child a").all_inner_texts()]


def admin_state(site: Site) -> dict[str, Any]:
    """What only an admin may change (tokens without their last use)."""
    with site.api() as api:
        settings = api.get("/api/v1/settings").json()
    tokens = [
        {k: v for k, v in t.items() if not k.startswith("last_used")}
        for t in site.cli.json("token", "list")
    ]
    return {
        "accounts": site.cli.json("account", "list"),
        "dns": site.cli.json("dns", "list"),
        "users": site.cli.json("user", "list"),
        "tokens": tokens,
        "settings": settings,
    }


# -- an operator ------------------------------------------------------------------------------


def test_an_operator_requests_and_renews_but_is_refused_every_admin_page_and_action(
    site: Site, page: Page
) -> None:
    log_in(page, "op", OPERATOR_PASSWORD, "/certificates/new")
    expect(page.locator(".me .role")).to_have_text("operator")
    page.fill("#names", "op.example.com")
    page.select_option("#challenge", "dns-01")  # the zone's account: com
    page.click("#request-submit")
    page.wait_for_url(re.compile(r"/certificates/\d+$"))
    cert_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#status")).to_have_text("valid", timeout=WAIT_MS)
    first_serial = site.cli.json("cert", "show", str(cert_id))["serial"]

    page.click("#renew")
    expect(flash(page)).to_contain_text("Renewal queued")
    expect(page.locator("#progress-line")).to_contain_text("(renew)")
    expect(page.locator("#order-state")).to_have_text("valid", timeout=WAIT_MS)
    expect(page.locator("[data-fact=serial]")).not_to_have_text(first_serial)
    shown = site.cli.json("cert", "show", str(cert_id))
    assert shown["serial"] != first_serial and len(shown["history"]) == 1

    # No way in is shown...
    expect(page.locator("nav >> text=Users")).to_have_count(0)
    expect(page.locator("nav >> text=Tokens")).to_have_count(0)
    page.goto("/accounts")
    expect(page.locator("#accounts")).to_contain_text("main")
    for hidden in ("details.manage", "#register-form", "#import-form"):
        expect(page.locator(hidden)).to_have_count(0)
    page.goto("/dns-accounts")
    expect(page.locator("#dns-accounts")).to_contain_text("com")
    expect(page.locator("#dns-form")).to_have_count(0)
    expect(page.locator("#dns-accounts button")).to_have_count(0)
    page.goto("/settings")
    expect(page.locator("#save-settings")).to_have_count(0)
    for field in ("#renew_before_days", "#notify_to", "#console_certificate_id"):
        expect(page.locator(field)).to_be_disabled()

    # ...and going there anyway, or posting a forged form with the session's own valid
    # CSRF token, is refused.
    for path in ("/users", "/tokens"):
        assert page.request.get(path).status == 403, path
    page.goto("/certificates")
    csrf = csrf_of(page)
    before = admin_state(site)
    forged: dict[str, dict[str, str]] = {
        "/users": {"name": "mallory", "role": "admin", "password": "mallory-password-1"},
        "/users/op/role": {"role": "admin"},
        "/users/admin/disable": {},
        "/users/admin/password": {"password": "taken-over-password"},
        "/users/admin/delete": {},
        "/tokens": {"name": "stolen", "role": "admin"},
        "/tokens/1/revoke": {},
        "/settings": {"renew_before_days": "1", "notify_to": "mallory@example.com"},
        "/accounts": {"preset": "custom", "directory_url": site.pebble.directory_url},
        "/accounts/import": {"key_pem": "-----BEGIN PRIVATE KEY-----"},
        "/accounts/main/emails": {"emails": "mallory@example.com"},
        "/accounts/main/rollover": {"key_type": "ec-p384"},
        "/accounts/main/deactivate": {"confirm": "1"},
        "/accounts/main/delete": {},
        "/dns-accounts": {"name": "evil", "provider": "rfc2136", "opt.server": "192.0.2.1"},
        "/dns-accounts/com/test": {},
        "/dns-accounts/com/delete": {},
    }
    for path, fields in forged.items():
        answer = page.request.post(path, form={"csrf_token": csrf, **fields})
        assert answer.status == 403, f"{path}: {answer.status}"
        assert "Not allowed" in answer.text(), path
    assert admin_state(site) == before


# -- users and tokens -------------------------------------------------------------------------


def test_admin_adds_a_user_changes_its_role_disables_it_and_resets_its_password(
    site: Site, page: Page, browser: Browser
) -> None:
    log_in(page, "admin", ADMIN_PASSWORD, "/users")
    page.fill("#name", "alice")
    page.select_option("#role", "operator")
    page.fill("#password", "short")
    page.click("#add-user")
    expect(page.locator("#password-error")).to_contain_text("password")
    expect(page.locator("#name")).to_have_value("alice")
    page.fill("#password", "alice-password-1")
    page.click("#add-user")
    expect(flash(page)).to_have_text("User 'alice' added (operator).")
    expect(page.locator("form[action='/users/alice/role'] select")).to_have_value("operator")

    alice = new_page(browser, site.url)
    try:
        log_in(alice, "alice", "alice-password-1", "/")
        expect(alice.locator(".me .role")).to_have_text("operator")

        page.select_option("form[action='/users/alice/role'] select", "viewer")
        page.click("form[action='/users/alice/role'] button")
        expect(flash(page)).to_have_text("alice is now viewer.")
        alice.reload()
        expect(alice.locator(".me .role")).to_have_text("viewer")  # at her next request

        page.click("form[action='/users/alice/disable'] button")
        expect(flash(page)).to_have_text("alice is disabled.")
        expect(page.locator("#users tbody tr", has_text="alice")).to_contain_text("disabled")
        alice.reload()  # her session ended...
        assert "/login" in alice.url
        alice.fill("#name", "alice")  # ...and she cannot log in again
        alice.fill("#password", "alice-password-1")
        alice.click("button[type=submit]")
        expect(alice.locator("#login-error")).to_have_text("Wrong user name or password.")

        page.fill("form[action='/users/alice/password'] input[name=password]", "alice-new-pass-2")
        page.click("form[action='/users/alice/password'] button")
        expect(flash(page)).to_have_text("alice has a new password.")
        page.click("form[action='/users/alice/enable'] button")
        expect(flash(page)).to_have_text("alice is enabled.")
        alice.fill("#name", "alice")
        alice.fill("#password", "alice-password-1")
        alice.click("button[type=submit]")
        expect(alice.locator("#login-error")).to_have_text("Wrong user name or password.")
        alice.fill("#name", "alice")
        alice.fill("#password", "alice-new-pass-2")
        with alice.expect_navigation():
            alice.click("button[type=submit]")
        expect(alice.locator(".me")).to_contain_text("alice")
    finally:
        alice.context.close()

    # The last enabled admin stays one, and the page says why.
    page.click("form[action='/users/admin/disable'] button")
    expect(flash(page)).to_contain_text("'admin' is the last enabled admin")
    expect(flash(page)).to_have_class(re.compile(r"\berror\b"))
    page.select_option("form[action='/users/admin/role'] select", "viewer")
    page.click("form[action='/users/admin/role'] button")
    expect(flash(page)).to_contain_text("'admin' is the last enabled admin")
    users = {u["name"]: u for u in site.cli.json("user", "list")}
    assert users["admin"]["role"] == "admin" and users["admin"]["enabled"]
    assert users["alice"]["role"] == "viewer" and users["alice"]["enabled"]


def test_admin_creates_a_token_shown_once_limits_one_to_names_and_revokes_one(
    site: Site, page: Page
) -> None:
    log_in(page, "admin", ADMIN_PASSWORD, "/tokens")
    page.fill("#name", "ci-reader")
    page.select_option("#role", "viewer")
    page.click("#create-token")
    secret = page.locator("#new-token").inner_text().strip()
    assert len(secret) > 20
    with site.api(secret) as api:
        listed = api.get("/api/v1/certificates")
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["items"]) == 50
    page.goto("/tokens")
    expect(page.locator("#new-token")).to_have_count(0)
    assert secret not in page.content()
    row = page.locator("#tokens tbody tr", has_text="ci-reader")
    expect(row).to_contain_text("viewer")
    expect(row).to_contain_text("all names")
    expect(row).to_contain_text("from 127.0.0.1")  # its last use
    prefix = row.locator("code").inner_text().removesuffix("…")
    assert prefix and secret.startswith(prefix)

    # Limited to names below sorted.example.com: it sees those, and nothing else.
    page.fill("#name", "sorted-only")
    page.fill("#names", "*.sorted.example.com")
    page.click("#create-token")
    limited = page.locator("#new-token").inner_text().strip()
    expect(page.locator("#tokens tbody tr", has_text="sorted-only")).to_contain_text(
        "*.sorted.example.com"
    )
    with site.api(limited) as api:
        items = api.get("/api/v1/certificates").json()["items"]
        assert sorted(c["id"] for c in items) == [1, 2]
        assert api.get("/api/v1/certificates/1").status_code == 200
        assert api.get("/api/v1/certificates/3").status_code in (403, 404)

    page.locator("#tokens tbody tr", has_text="ci-reader").locator("button").click()
    expect(flash(page)).to_contain_text("revoked; it stops working at once")
    expect(page.locator("#tokens tbody tr", has_text="ci-reader")).to_contain_text("revoked")
    with site.api(secret) as api:
        assert api.get("/api/v1/certificates").status_code == 401
    with site.api(limited) as api:
        assert api.get("/api/v1/certificates").status_code == 200


# -- settings ---------------------------------------------------------------------------------


def test_settings_are_saved_shown_again_and_in_the_api_and_a_bad_address_saves_nothing(
    site: Site, page: Page
) -> None:
    log_in(page, "admin", ADMIN_PASSWORD, "/settings")
    page.fill("#renew_before_days", "21")
    page.fill("#notify_to", "ops@example.com\nsecurity@example.com")
    page.click("#save-settings")
    expect(flash(page)).to_have_text("Settings saved.")
    page.reload()
    expect(page.locator("#renew_before_days")).to_have_value("21")
    expect(page.locator("#notify_to")).to_have_value("ops@example.com\nsecurity@example.com")
    saved = {"renew_before_days": 21.0, "notify_to": ["ops@example.com", "security@example.com"]}
    with site.api() as api:
        stored = api.get("/api/v1/settings").json()
    assert {k: stored[k] for k in saved} == saved

    page.fill("#renew_before_days", "40")
    page.fill("#notify_to", "ops@example.com\ncertificate-team")
    page.click("#save-settings")
    expect(page.locator("#notify_to-error")).to_contain_text("'certificate-team' is not an e-mail")
    expect(page.locator("#notify_to")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#renew_before_days-error")).to_have_count(0)
    expect(page.locator("#notify_to")).to_have_value("ops@example.com\ncertificate-team")
    with site.api() as api:
        stored = api.get("/api/v1/settings").json()
    assert stored["renew_before_days"] == 21 and stored["notify_to"] == saved["notify_to"]
    page.goto("/settings")
    expect(page.locator("#renew_before_days")).to_have_value("21")


# -- ACME accounts ----------------------------------------------------------------------------


def import_key(page: Page, site: Site, name: str, key_pem: str) -> None:
    page.select_option("#import-preset", "custom")
    page.fill("#import-directory", site.pebble.directory_url)
    page.fill("#import-name", name)
    page.fill("#key_pem", key_pem)
    page.fill("#import-bundle", site.pebble.ca_bundle.read_text())
    page.click("#import-form button[type=submit]")


def test_acme_account_emails_rollover_delete_import_and_deactivate(
    site: Site, page: Page, tmp_path: Path
) -> None:
    cli = site.cli
    registered = cli.register("spare")
    old_key = tmp_path / "old.pem"
    cli("account", "export-key", "spare", "--out", str(old_key))
    cli(
        "account", "register", "--directory", site.pebble.directory_url, "--agree-tos",
        "--ca-bundle", str(site.pebble.ca_bundle), "--name", "odd?#name",
        "--email", "odd@example.com",
    )  # fmt: skip

    log_in(page, "admin", ADMIN_PASSWORD, "/accounts")
    manage = page.locator("#manage-spare")
    manage.locator("summary").click()
    manage.locator("input[name=emails]").fill("new@example.com, two@example.com")
    manage.locator("form[action$='/emails'] button").click()
    expect(flash(page)).to_have_text("E-mails updated.")
    expect(page.locator("#accounts tr", has_text="spare")).to_contain_text(
        "new@example.com, two@example.com"
    )
    # What the CA holds, read back from it.
    page.locator("#manage-spare summary").click()
    page.click("#manage-spare form[action$='/refresh'] button")
    expect(flash(page)).to_have_text("Status read from the CA.")
    assert cli.json("account", "show", "spare")["emails"] == ["new@example.com", "two@example.com"]

    # Key rollover: a new key (of the type chosen), and the CA no longer knows the old one.
    page.locator("#manage-spare summary").click()
    page.select_option("#manage-spare select[name=key_type]", "ec-p384")
    page.click("#manage-spare form[action$='/rollover'] button")
    expect(flash(page)).to_have_text("Account 'spare' has a new key.")
    expect(page.locator("#accounts tr", has_text="spare")).to_contain_text("ec-p384")
    new_key = tmp_path / "new.pem"
    cli("account", "export-key", "spare", "--out", str(new_key))
    assert new_key.read_bytes() != old_key.read_bytes()
    import_key(page, site, "old-key", old_key.read_text())
    expect(page.locator("#key_pem-error")).to_contain_text("has no account for this key")
    expect(page.locator("#import-name")).to_have_value("old-key")

    # Deleting an account that certificates use is refused; an unused one is forgotten
    # here only, and importing its key finds it again at the CA.
    page.locator("#manage-main summary").click()
    page.click("#manage-main form[action$='/delete'] button")
    expect(flash(page)).to_contain_text("account 'main' still has")
    page.locator("#manage-spare summary").click()
    page.click("#manage-spare form[action$='/delete'] button")
    expect(flash(page)).to_have_text("Account 'spare' is forgotten here.")
    odd = page.locator("details.manage", has_text="Manage odd?#name")  # its URL is escaped
    odd.locator("summary").click()
    odd.locator("form[action$='/delete'] button").click()
    expect(flash(page)).to_have_text("Account 'odd?#name' is forgotten here.")
    expect(page.locator("#manage-spare")).to_have_count(0)
    assert not {"spare", "odd?#name"} & {a["name"] for a in cli.json("account", "list")}
    import_key(page, site, "spare-again", new_key.read_text())
    expect(flash(page)).to_have_text("Account 'spare-again' is imported.")
    again = cli.json("account", "show", "spare-again")
    assert again["uri"] == registered["uri"]
    assert again["key_type"] == "ec-p384" and again["status"] == "valid"
    assert again["emails"] == ["new@example.com", "two@example.com"]

    # Deactivate (at the CA, for good) is told apart from delete (here only).
    manage = page.locator("#manage-spare-again")
    manage.locator("summary").click()
    expect(manage).to_contain_text("ends the account at the CA, for good")
    expect(manage).to_contain_text("forgets the account here only")
    manage.locator("input[name=confirm]").check()
    manage.locator("form[action$='/deactivate'] button").click()
    expect(flash(page)).to_have_text("Account 'spare-again' is deactivated at the CA.")
    expect(page.locator("#accounts tr", has_text="spare-again").locator(".status")).to_have_text(
        "deactivated"
    )
    assert cli.json("account", "show", "spare-again")["status"] == "deactivated"
    page.locator("#manage-spare-again summary").click()
    expect(page.locator("#manage-spare-again form[action$='/rollover']")).to_have_count(0)


# -- DNS accounts -----------------------------------------------------------------------------


def add_dns_account(page: Page, name: str, server: str, key: str, secret: str, zones: str) -> None:
    page.select_option("#pick-provider", "rfc2136")
    expect(page.locator("#opt-tsig_secret")).to_have_attribute("type", "password")
    page.fill("#name", name)
    page.fill("#opt-server", server)
    page.fill("#opt-tsig_key_name", key)
    page.fill("#opt-tsig_secret", secret)
    page.fill("#zones", zones)
    page.click("#add-dns")


def test_dns_account_added_through_the_providers_fields_tested_and_deleted(
    site: Site, page: Page
) -> None:
    bind = site.bind
    log_in(page, "admin", ADMIN_PASSWORD, "/dns-accounts")
    expect(page.locator("#provider-pick button")).to_be_hidden()  # the script loads fields
    expect(page.locator("#options-empty")).to_be_visible()
    add_dns_account(
        page, "net-console", bind.address, NET_KEY, bind.keys[NET_KEY][1], "example.net"
    )
    expect(flash(page)).to_contain_text("DNS account 'net-console' added")
    row = page.locator("#dns-accounts tbody tr", has_text="net-console")
    expect(row).to_contain_text("rfc2136")
    expect(row).to_contain_text("example.net")
    assert bind.keys[NET_KEY][1] not in page.content()

    row.locator("button", has_text="Test").click()
    expect(flash(page)).to_contain_text("Test of 'net-console' passed")
    expect(flash(page)).to_contain_text(f"at {bind.address}")
    assert bind.txt("_acme-challenge.example.net") == []

    wrong = "c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1rZXlzLXNlY3JldA=="
    add_dns_account(page, "bad-console", bind.address, COM_KEY, wrong, "")
    expect(flash(page)).to_contain_text("DNS account 'bad-console' added")
    row = page.locator("#dns-accounts tbody tr", has_text="bad-console")
    row.locator("input[name=zone]").fill("example.com")
    row.locator("button", has_text="Test").click()
    expect(flash(page)).to_contain_text("Test of 'bad-console' failed")
    expect(flash(page)).to_contain_text("rejected the TSIG signature")
    expect(flash(page)).to_have_class(re.compile(r"\berror\b"))
    assert wrong not in page.content()

    for name in ("bad-console", "net-console"):
        page.locator("#dns-accounts tbody tr", has_text=name).locator("button.danger").click()
        expect(flash(page)).to_have_text(f"DNS account {name!r} deleted.")
    expect(page.locator("#dns-accounts tbody tr")).to_have_count(1)  # com, from the CLI
    assert [a["name"] for a in site.cli.json("dns", "list")] == ["com"]


# -- the certificates table -------------------------------------------------------------------


def expiry_order(cert: dict[str, Any]) -> tuple[bool, datetime | None, int]:
    """The table's order by expiry: earliest first, the not yet issued last, then by ID."""
    when = datetime.fromisoformat(cert["not_after"]) if cert["not_after"] else None
    return (when is None, when, cert["id"])


def test_the_table_sorts_by_expiry_both_ways_filters_searches_and_pages(
    site: Site, page: Page
) -> None:
    shown = {c["id"]: c for c in site.cli.json("cert", "list")}
    assert shown[1]["not_after"] > shown[2]["not_after"]  # the fixture renewed 1

    log_in(page, "admin", ADMIN_PASSWORD, "/certificates?search=sorted.example.com")
    assert ids_in_table(page) == [1, 2]  # by ID
    expires = page.locator("#certificates thead a", has_text="Expires")
    expires.click()
    page.wait_for_url(re.compile(r"sort=expires"))
    assert ids_in_table(page) == [2, 1]
    expect(page.locator("#certificates th[aria-sort]")).to_have_attribute("aria-sort", "ascending")
    page.locator("#certificates thead a", has_text="Expires").click()
    page.wait_for_url(re.compile(r"sort=-expires"))
    assert ids_in_table(page) == [1, 2]
    expect(page.locator("#certificates th[aria-sort]")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#search")).to_have_value("sorted.example.com")  # the filter stays

    # Filter by status.
    page.goto("/certificates")
    page.select_option("#status", "valid")
    page.click("form[role=search] button[type=submit]")
    page.wait_for_url(re.compile(r"status=valid"))
    valid = sorted(i for i, c in shown.items() if c["status"] == "valid")
    assert {1, 2} <= set(valid)
    assert ids_in_table(page) == valid
    assert set(page.locator("#certificates tbody .status").all_inner_texts()) == {"valid"}
    page.select_option("#status", "pending")
    page.click("form[role=search] button[type=submit]")
    page.wait_for_url(re.compile(r"status=pending"))
    assert len(ids_in_table(page)) == 50
    assert set(page.locator("#certificates tbody .status").all_inner_texts()) == {"pending"}
    expect(page.locator("#next-page")).to_be_visible()

    # Search.
    page.goto("/certificates")
    page.fill("#search", "p07.page")
    page.click("form[role=search] button[type=submit]")
    expect(page.locator("#certificates tbody tr")).to_have_count(1)
    expect(page.locator("#certificates .cert-name")).to_have_text("p07.page.example.com")
    page.fill("#search", "no-such-name")
    page.click("form[role=search] button[type=submit]")
    expect(page.locator("#certificates tbody")).to_contain_text("No certificate matches.")

    # Every certificate by expiry, a page at a time: each once, in order.
    page.goto("/certificates")
    page.locator("#certificates thead a", has_text="Expires").click()
    page.wait_for_url(re.compile(r"sort=expires"))
    seen: list[int] = []
    pages = 0
    while True:
        rows = ids_in_table(page)
        assert 0 < len(rows) <= 50
        seen += rows
        pages += 1
        if page.locator("#next-page").count() == 0:
            break
        assert len(rows) == 50
        page.click("#next-page")
        page.wait_for_url(re.compile(r"cursor="))
        expect(page.locator("nav.pager a", has_text="First page")).to_be_visible()
    everything = site.cli.json("cert", "list")
    assert len(seen) == len(set(seen)), "a row repeats"
    assert len(everything) > 50 and pages >= 2
    assert seen == [c["id"] for c in sorted(everything, key=expiry_order)]


# -- manual DNS-01 ----------------------------------------------------------------------------


def record_values(page: Page) -> list[str]:
    return sorted(page.locator("#dns-records-body code.value").all_inner_texts())


def test_manual_dns01_records_new_challenge_and_verify_in_the_console(
    site: Site, page: Page
) -> None:
    log_in(page, "admin", ADMIN_PASSWORD, "/certificates/new")
    page.fill("#names", "hand.example.com")
    page.select_option("#challenge", "dns-01")
    page.select_option("#dns_account", "manual")
    page.click("#request-submit")
    page.wait_for_url(re.compile(r"/certificates/\d+$"))
    cert_id = int(page.url.rsplit("/", 1)[1])
    page.evaluate("window.__stillTheSamePage = 'yes'")

    # The records arrive once serve has placed the order: on this page, without a reload.
    records = page.locator("#dns-records")
    expect(records).to_be_visible(timeout=WAIT_MS)
    assert page.evaluate("window.__stillTheSamePage") == "yes"
    expect(records).to_contain_text("_acme-challenge.hand.example.com")
    expect(page.locator("#order-state")).to_have_text("awaiting-dns")
    first = record_values(page)
    assert len(first) == 1
    assert first == [r["value"] for r in site.cli.json("cert", "show", str(cert_id))["dns_records"]]

    page.click("#new-challenge")
    expect(flash(page)).to_contain_text("New challenge values are on their way")
    page.wait_for_function(
        """old => {
            const v = [...document.querySelectorAll('#dns-records-body code.value')];
            return v.length === 1 && v[0].textContent !== old
                && !document.getElementById('dns-records').hidden;
        }""",
        arg=first[0],
        timeout=WAIT_MS,
    )
    expect(page.locator("#order-state")).to_have_text("awaiting-dns")
    second = record_values(page)
    stored = site.cli.json("cert", "show", str(cert_id))["dns_records"]
    assert second == [r["value"] for r in stored] and second != first

    written = site.bind.nsupdate(
        f'update add _acme-challenge.hand.example.com. 60 IN TXT "{second[0]}"\n', COM_KEY
    )
    assert written.returncode == 0, written.stderr
    page.click("#verify")
    expect(flash(page)).to_contain_text("Checking the records")
    page.evaluate("window.__stillTheSamePage = 'yes'")
    expect(page.locator("#status")).to_have_text("valid", timeout=WAIT_MS)
    expect(page.locator("[data-fact=serial]")).to_have_text(re.compile(r"^[0-9a-f]+$"))
    expect(page.locator("#download-form")).to_be_visible()
    assert page.evaluate("window.__stillTheSamePage") == "yes"
    assert site.cli.json("cert", "show", str(cert_id))["status"] == "valid"
