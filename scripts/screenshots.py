"""`make screenshots`: every console page as PNG under docs/screenshots/, at desktop
(1280x800) and phone (375x812) width.

Starts Pebble and `certbroker serve` the way the tests do (tests/support), fills a
throwaway store with a few certificates (valid ones, one revoked, one waiting for manual
DNS records), logs in with Debian's Chromium and saves each page, full length."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402
from tests.conftest import make_cli  # noqa: E402
from tests.support.browser import launch, log_in  # noqa: E402
from tests.support.pebble import start_pebble  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.serve import api_url, start_api, stop_serve, wait_until  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
PASSWORD = "screenshot-admin-1"  # noqa: S105 - a throwaway store
SIZES = {"desktop": (1280, 800), "phone": (375, 812)}
PAGES = {
    "login": "/login",
    "dashboard": "/",
    "certificates": "/certificates",
    "request": "/certificates/new",
    "certificate": "/certificates/1",
    "manual-dns": "/certificates/6",
    "accounts": "/accounts",
    "dns-accounts": "/dns-accounts?provider=rfc2136",
    "events": "/events",
    "alarms": "/alarms",
    "settings": "/settings",
    "users": "/users",
    "tokens": "/tokens",
    "clients": "/clients",
    "approvals": "/approvals",
}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="certbroker-screenshots-"))
    # Pebbles with short lifetimes, so the dashboard's 90-day timeline has dots.
    pebbles = {
        days: start_pebble(
            work / f"pebble-{days}", http_port=free_port(), validity_seconds=days * 86400
        )
        for days in (75, 40, 20, 5)
    }
    pebble = pebbles[75]
    serve = None
    try:
        cli = make_cli(work / "data", pebble)
        for days, server in pebbles.items():
            cli(
                "account", "register", "--directory", server.directory_url,
                "--email", "ops@example.com", "--agree-tos",
                "--ca-bundle", str(server.ca_bundle), "--name", f"pebble-{days}d",
            )  # fmt: skip
        for days, names in (
            (75, ["portal.example.com", "www.portal.example.com"]),
            (40, ["api.example.com"]),
            (20, ["mail.example.com", "smtp.example.com", "imap.example.com"]),
            (5, ["old.example.com"]),
        ):
            port = str(pebbles[days].http_port)
            cli(
                "cert", "request", *names, "--account", f"pebble-{days}d", "--wait",
                env={"CERTBROKER_HTTP01_PORT": port},
            )  # fmt: skip
        cli("cert", "request", "legacy.example.com", "--account", "pebble-75d", "--wait")
        cli("cert", "revoke", "5", "--reason", "superseded")
        cli(
            "cert", "request", "*.intranet.example.com", "--account", "pebble-75d",
            "--challenge", "dns-01", "--dns-account", "manual",
        )  # fmt: skip
        serve = start_api(
            cli,
            CERTBROKER_ADMIN_PASSWORD=PASSWORD,
            CERTBROKER_WORKER_PROCESSES="1",
            CERTBROKER_HTTP01_PORT=str(free_port()),
        )
        cli(
            "user",
            "add",
            "olivia",
            "--role",
            "operator",
            "--password-stdin",
            input="operator-password-1\n",
        )
        cli(
            "user",
            "add",
            "victor",
            "--role",
            "viewer",
            "--password-stdin",
            input="viewer-password-1\n",
        )
        cli(
            "token",
            "create",
            "--name",
            "deploy hook",
            "--role",
            "viewer",
            "--names",
            "*.example.com",
        )
        cli("client", "add", "gw-berlin-1", "--allow", "*.dev.example.com", "--policy", "approve")
        wait_until(
            "the manual DNS records",
            lambda: cli.json("cert", "show", "6")["dns_records"],
            serve=serve,
        )
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            for size, (width, height) in SIZES.items():
                context = browser.new_context(
                    base_url=api_url(cli), viewport={"width": width, "height": height}
                )
                page = context.new_page()
                page.goto("/login")
                page.screenshot(path=str(OUT / f"login-{size}.png"), full_page=True)
                log_in(page, "admin", PASSWORD)
                for name, path in PAGES.items():
                    if name == "login":
                        continue
                    page.goto(path)
                    page.screenshot(path=str(OUT / f"{name}-{size}.png"), full_page=True)
                    print(f"docs/screenshots/{name}-{size}.png")
                context.close()
            browser.close()
    finally:
        if serve is not None:
            stop_serve(serve)
        for server in pebbles.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
