"""Webhooks end to end: a certificate issued for real by Pebble reaches a receiver the
test runs on a free port, signed with the secret `webhook add` printed (checked with
hmac here, not with certbroker's code), after a 500 and a retry carrying the same
webhook-id; a delivery that keeps failing ends dead and `webhook retry` sends it again;
receivers at private, loopback and link-local addresses are refused when added; the
API and the console are the admin's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import Cli
from tests.support.browser import log_in, new_page
from tests.support.serve import api_url, start_api, start_serve, stop_serve, wait_until
from tests.support.webhook_receiver import Receiver, signature_ok


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    failing = {"until": 1}  # the first request is answered 500

    def answer(n: int) -> int:
        return 500 if n <= failing["until"] else 200

    with Receiver(answer) as r:
        r.failing = failing  # type: ignore[attr-defined]
        yield r


def _add(cli: Cli, receiver: Receiver, events: str = "issued,renewed") -> tuple[int, str]:
    out = cli("webhook", "add", receiver.url, "--events", events, "--allow-private").stdout
    lines = out.strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("whsec_") and secret == secret.strip()
    webhook_id = int(lines[0].split()[1])
    receiver.secret = secret
    return webhook_id, secret


def _deliveries(cli: Cli, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cli.json("webhook", "deliveries", *args)
    return found


def test_an_issuance_reaches_the_receiver_signed_and_retried_after_a_500(
    cli: Cli, receiver: Receiver
) -> None:
    cli.register()
    cli("cert", "request", "before.example.com", "--wait")  # before the webhook: not sent
    webhook_id, secret = _add(cli, receiver)
    serve = start_serve(cli, CERTBROKER_WEBHOOK_RETRY_FIRST="1")
    try:
        cli("cert", "request", "hook.example.com", "--wait")
        wait_until("the retry", lambda: len(receiver.requests()) >= 2, serve=serve)
        wait_until(
            "the delivery to be logged",
            lambda: _deliveries(cli)[0]["state"] == "delivered",
            serve=serve,
        )
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    first, second = receiver.requests()
    assert (first.answered, second.answered) == (500, 200)
    for got in (first, second):
        assert got.signature_ok, got.headers
        assert signature_ok(secret, got.headers, got.body)
        assert got.headers["content-type"] == "application/json"
        assert "certbroker" in got.headers["user-agent"]
        assert got.path == "/hooks/certbroker"
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert not signature_ok("whsec_" + "A" * 44, first.headers, first.body)  # a wrong key fails
    payload = json.loads(first.body)
    shown = cli.json("cert", "show", "2")
    assert payload["type"] == "certificate.issued"
    assert payload["data"]["kind"] == "issued"
    assert payload["data"]["certificate_id"] == 2
    assert payload["data"]["names"] == ["hook.example.com"]
    assert payload["data"]["serial"] == shown["serial"]
    assert payload["data"]["not_after"] == shown["not_after"]
    timestamp = datetime.fromisoformat(payload["timestamp"])
    assert abs(timestamp - datetime.now(UTC)) < timedelta(hours=1)
    (delivery,) = _deliveries(cli, "--webhook", str(webhook_id))
    assert delivery["state"] == "delivered" and delivery["attempts"] == 2
    assert delivery["message_id"] == first.headers["webhook-id"]
    assert delivery["last_status"] == 200
    assert delivery["last_response"] == "status 200 from the test receiver"
    assert cli("webhook", "show", str(webhook_id)).stdout.count("whsec_") == 0

    out = cli("webhook", "test", str(webhook_id))  # a test message, sent now
    assert "answered 200" in out.stdout
    test_message = receiver.requests()[-1]
    assert test_message.signature_ok
    assert json.loads(test_message.body)["type"] == "webhook.test"


def test_a_delivery_that_keeps_failing_ends_dead_and_retry_sends_it_again(
    cli: Cli, receiver: Receiver
) -> None:
    from sqlalchemy import update

    from certbroker.store.db import make_engine
    from certbroker.store.schema import webhook_deliveries

    receiver.failing["until"] = 10**6  # type: ignore[attr-defined]
    cli.register()
    _add(cli, receiver, "issued")
    cli("cert", "request", "dead.example.com", "--wait")
    serve = start_serve(cli, CERTBROKER_WEBHOOK_RETRY_FIRST="1")
    try:
        wait_until("two failed attempts", lambda: len(receiver.requests()) >= 2, serve=serve)
        (failing,) = _deliveries(cli)
        assert failing["state"] in ("failed", "sending", "queued")
        # A day of failures, for the store: the first attempt was two days ago.
        engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
        with engine.begin() as conn:
            conn.execute(
                update(webhook_deliveries).values(
                    first_attempt_at=datetime.now(UTC) - timedelta(days=2)
                )
            )
        engine.dispose()
        wait_until("the dead letter", lambda: _deliveries(cli)[0]["state"] == "dead", serve=serve)
        (dead,) = _deliveries(cli, "--state", "dead")
        assert dead["last_status"] == 500 and "a day after the first attempt" in dead["last_error"]
        assert "DEAD" in cli("webhook", "deliveries", "--state", "dead").stdout
        tried = len(receiver.requests())
        receiver.failing["until"] = 0  # type: ignore[attr-defined]
        out = cli("webhook", "retry", str(dead["id"]))
        assert "queued again" in out.stdout
        wait_until(
            "the retried delivery",
            lambda: _deliveries(cli)[0]["state"] == "delivered",
            serve=serve,
        )
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    sent = receiver.requests()
    assert len(sent) == tried + 1 and sent[-1].answered == 200
    assert all(r.signature_ok for r in sent)
    assert len({r.headers["webhook-id"] for r in sent}) == 1  # one message, every attempt
    assert len({r.body for r in sent}) == 1
    out = cli("webhook", "retry", str(dead["id"]), check=False)
    assert out.returncode == 2 and "only a dead or failed one" in out.stderr


def test_private_addresses_bad_urls_and_unknown_events_are_refused(offline_cli: Cli) -> None:
    cases = [
        (("http://127.0.0.1:8080/hook", "issued"), "127.0.0.1, a loopback address"),
        (("http://10.1.2.3/", "issued"), "10.1.2.3, a private (RFC 1918) address"),
        (("http://169.254.169.254/latest/meta-data/", "alarm"), "a link-local address"),
        (("http://[::1]/", "issued"), "::1, a loopback address"),
        (("http://[::ffff:192.168.0.1]/", "issued"), "private (RFC 1918)"),
        (("http://100.64.1.1/", "issued"), "carrier-grade NAT"),
        (("http://localhost:9/hook", "issued"), "localhost, which resolves to"),
        (("ftp://example.com/", "issued"), "must start with http:// or https://"),
        (("https:///nohost", "issued"), "names no host"),
        (("https://example.com/", "issued,sunrise"), "unknown event 'sunrise'"),
    ]
    for (url, events), message in cases:
        out = offline_cli("webhook", "add", url, "--events", events, check=False)
        assert out.returncode == 2, (url, out.stderr)
        assert message in out.stderr, (url, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        if "address" in message or "resolves" in message:
            assert "--allow-private" in out.stderr
    out = offline_cli("webhook", "add", "https://example.com/", "--events", "all", "--format",
                      "xml", check=False)  # fmt: skip
    assert out.returncode == 2 and "--format 'xml'" in out.stderr
    assert "no webhooks" in offline_cli("webhook", "list").stdout
    assert offline_cli.json("webhook", "deliveries") == []
    made = offline_cli.json(
        "webhook", "add", "http://127.0.0.1:9/", "--events", "all", "--allow-private",
        "--format", "slack", "--description", "chat",
    )  # fmt: skip
    assert made["secret"].startswith("whsec_") and made["allow_private"] is True
    listed = offline_cli.json("webhook", "list")
    assert [w["id"] for w in listed] == [made["id"]] and "secret" not in listed[0]
    assert listed[0]["events"] == [
        "issued", "renewed", "failed", "expiring", "revoked", "alarm", "deployed"
    ]  # fmt: skip
    for db in offline_cli.data_dir.glob("*.db"):
        assert made["secret"].encode() not in db.read_bytes()  # sealed at rest
    offline_cli("webhook", "delete", str(made["id"]))
    assert "no webhooks" in offline_cli("webhook", "list").stdout


def test_webhooks_over_the_api_and_the_console_are_the_admins(
    cli: Cli, receiver: Receiver, browser: Browser
) -> None:
    tokens = {
        role: cli("token", "create", "--name", role, "--role", role).stdout.split()[-1]
        for role in ("admin", "operator")
    }
    receiver.failing["until"] = 1  # type: ignore[attr-defined]
    serve = start_api(cli, CERTBROKER_ADMIN_PASSWORD="admin-password-1",
                      CERTBROKER_WEBHOOK_RETRY_FIRST="1")  # fmt: skip

    def as_(role: str) -> httpx.Client:
        return httpx.Client(base_url=api_url(cli), trust_env=False, timeout=60,
                            headers={"Authorization": f"Bearer {tokens[role]}"})  # fmt: skip

    page = new_page(browser, api_url(cli))
    try:
        # (after serve made `admin`: the first start makes it only in an empty store)
        cli("user", "add", "op", "--role", "operator", "--password-stdin",
            input="operator-password-1\n")  # fmt: skip
        with as_("admin") as admin, as_("operator") as operator:
            body = {"url": receiver.url, "events": ["issued"], "allow_private": True}
            assert operator.get("/api/v1/webhooks").status_code == 403
            assert operator.post("/api/v1/webhooks", json=body).status_code == 403
            refused = admin.post("/api/v1/webhooks", json={**body, "allow_private": False})
            assert refused.status_code == 422 and "--allow-private" in refused.json()["detail"]
            made = admin.post("/api/v1/webhooks", json=body)
            assert made.status_code == 201, made.text
            hook = made.json()
            receiver.secret = hook["secret"]
            assert "secret" not in admin.get(f"/api/v1/webhooks/{hook['id']}").json()
            assert "secret" not in json.dumps(admin.get("/api/v1/webhooks").json())
            tested = admin.post(f"/api/v1/webhooks/{hook['id']}/test").json()
            assert tested["state"] == "dead" and tested["last_status"] == 500
            log = admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries?state=dead").json()
            assert [d["id"] for d in log] == [tested["id"]]
            assert (
                operator.post(f"/api/v1/webhook-deliveries/{tested['id']}/retry").status_code == 403
            )
            again = admin.post(f"/api/v1/webhook-deliveries/{tested['id']}/retry")
            assert again.status_code == 200 and again.json()["state"] == "queued"
            wait_until("the API's retry", lambda: len(receiver.requests()) == 2, serve=serve)
            assert all(r.signature_ok for r in receiver.requests())
            assert admin.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 200
            assert admin.get("/api/v1/webhooks").json() == []

        # The console: an operator sees no link and is refused the page.
        log_in(page, "op", "operator-password-1", "/")
        expect(page.locator("nav >> text=Webhooks")).to_have_count(0)
        assert page.request.get("/webhooks").status == 403
        page.context.clear_cookies()

        receiver.failing["until"] = 3  # type: ignore[attr-defined]
        log_in(page, "admin", "admin-password-1", "/")
        page.click("nav >> text=Webhooks")
        page.fill("#url", "http://10.9.8.7/hook")
        page.check("input[name=events][value=issued]")
        page.click("#add-webhook")
        expect(page.locator(".field-error")).to_contain_text("--allow-private")
        page.fill("#url", receiver.url)
        page.check("#allow_private")
        page.click("#add-webhook")
        secret = page.locator("#new-secret").inner_text().strip()
        assert secret.startswith("whsec_")
        receiver.secret = secret
        page.goto("/webhooks")
        expect(page.locator("#new-secret")).to_have_count(0)  # shown once
        (webhook,) = cli.json("webhook", "list")
        page.locator(f"#webhook-{webhook['id']} summary").click()
        page.locator(f"#webhook-{webhook['id']} button.test").click()
        expect(page.locator("main > .flash")).to_contain_text("NOT delivered")
        row = page.locator(f"#deliveries-{webhook['id']} tbody tr").first
        expect(row).to_contain_text("dead")
        expect(page.locator(f"#webhook-{webhook['id']} .dead-count")).to_have_text("1 dead")
        row.locator("button.retry").click()
        expect(page.locator("main > .flash")).to_contain_text("queued again")
        wait_until(
            "the console's retry",
            lambda: receiver.requests()[-1].answered == 200,
            serve=serve,
        )
        page.reload()
        expect(page.locator(f"#deliveries-{webhook['id']} tbody tr").first).to_contain_text(
            "delivered"
        )
        tested = [r for r in receiver.requests() if r.headers.get("webhook-id")][-2:]
        assert all(r.signature_ok for r in tested)
        assert tested[0].headers["webhook-id"] == tested[1].headers["webhook-id"]
    finally:
        page.context.close()
        log_text = stop_serve(serve)
    assert serve.returncode == 0, log_text
