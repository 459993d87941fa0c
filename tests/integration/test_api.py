"""The REST API of a real `certbroker serve`, against Pebble: a certificate requested
through the API becomes valid (followed as server-sent events), is downloaded and
revoked; each role and each name-limited token is refused what it may not do; a viewer
never receives key material; errors are problem+json; Idempotency-Key does the work
once; pages follow keyset cursors."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, stop_serve, wait_until

ADMIN_PASSWORD = "api-test-admin-password"


def token(cli: Cli, *args: str) -> str:
    """`certbroker token create …`: the token is the last line of what it prints."""
    out = cli("token", "create", *args).stdout
    return out.strip().splitlines()[-1]


@dataclass
class Broker:
    cli: Cli
    serve: subprocess.Popen[str]
    url: str
    tokens: dict[str, str]

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Broker]:
    cli = make_cli(tmp_path_factory.mktemp("api") / "data", pebble)
    cli.register()
    tokens = {
        "admin": token(cli, "--name", "ci", "--role", "admin"),
        "operator": token(cli, "--name", "deploy", "--role", "operator"),
        "viewer": token(cli, "--name", "dashboards", "--role", "viewer"),
        "limited": token(
            cli, "--name", "shop", "--role", "operator", "--names", "*.shop.example.com"
        ),
    }
    serve = start_api(
        cli, CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD, CERTBROKER_SCHEDULER_INTERVAL="0.5"
    )
    try:
        yield Broker(cli, serve, api_url(cli), tokens)
    finally:
        stop_serve(serve)


def sse_events(client: httpx.Client, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a server-sent-events stream, until the server ends it."""
    found: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    with client.stream("GET", path, timeout=180) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                found.append((kind, json.loads(line[len("data: ") :])))
    return found


def request(client: httpx.Client, *names: str, **options: Any) -> httpx.Response:
    return client.post("/api/v1/certificates", json={"names": list(names), **options})


def test_without_credentials_the_api_answers_401_as_a_problem(broker: Broker) -> None:
    with broker.client(None) as anonymous:
        answer = anonymous.get("/api/v1/certificates")
        wrong = anonymous.get(
            "/api/v1/certificates", headers={"Authorization": "Bearer cbt_not-a-token"}
        )
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    problem = answer.json()
    assert problem["status"] == 401 and problem["title"] and "token" in problem["detail"]
    assert wrong.status_code == 401 and "unknown API token" in wrong.json()["detail"]


def test_a_certificate_requested_through_the_api_is_issued_downloaded_and_revoked(
    broker: Broker,
) -> None:
    with broker.client("operator") as operator, broker.client("viewer") as viewer:
        asked = request(
            operator,
            "api.example.com",
            "www.api.example.com",
            label="Web front",
            keystore_type="pkcs12",
            keystore_password="kept-secret",
        )
        assert asked.status_code == 202, asked.text
        cert_id = asked.json()["id"]
        assert asked.headers["location"] == f"/api/v1/certificates/{cert_id}"

        events = sse_events(operator, f"/api/v1/certificates/{cert_id}/progress/stream")
        kinds = [k for k, _ in events]
        assert kinds[-1] == "done" and "progress" in kinds
        assert events[-1][1]["status"] == "valid"
        # The stream showed the order moving, not only its end.
        states = [data["order"]["state"] for _, data in events if data.get("order")]
        assert len(set(states)) >= 2, states

        shown = viewer.get(f"/api/v1/certificates/{cert_id}").json()
        assert shown["status"] == "valid" and shown["label"] == "Web front"
        assert shown["keystore_type"] == "pkcs12" and shown["keystore_password_kept"] is True
        assert "kept-secret" not in json.dumps(shown)

        chain = viewer.get(f"/api/v1/certificates/{cert_id}/chain")
        assert chain.status_code == 200 and b"PRIVATE KEY" not in chain.content
        leaf = x509.load_pem_x509_certificates(chain.content)[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {
            "api.example.com",
            "www.api.example.com",
        }

        # The format and password kept with the certificate are the download's defaults.
        download = operator.post(f"/api/v1/certificates/{cert_id}/export", json={})
        assert download.status_code == 200, download.text
        assert download.headers["content-type"] == "application/pkcs12"
        assert "attachment" in download.headers["content-disposition"]
        key, cert, _ = pkcs12.load_key_and_certificates(download.content, b"kept-secret")
        assert key is not None and cert is not None and cert.serial_number == leaf.serial_number
        # ... and of `cert export` too.
        out = broker.cli.data_dir.parent / "front.p12"
        broker.cli("cert", "export", str(cert_id), "--format", "pkcs12", "--out", str(out))
        assert out.stat().st_mode & 0o777 == 0o600
        assert pkcs12.load_key_and_certificates(out.read_bytes(), b"kept-secret")[0] is not None

        # A viewer gets what holds no key, and nothing that does.
        assert (
            viewer.post(
                f"/api/v1/certificates/{cert_id}/export", json={"format": "fullchain"}
            ).status_code
            == 200
        )
        for fmt in ("pem", "combined", "pkcs12", "jks"):
            refused = viewer.post(
                f"/api/v1/certificates/{cert_id}/export",
                json={"format": fmt, "password": "whatever-it-is"},
            )
            assert refused.status_code == 403, (fmt, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
            assert b"PRIVATE KEY" not in refused.content

        assert (
            viewer.post(
                f"/api/v1/certificates/{cert_id}/revoke", json={"reason": "superseded"}
            ).status_code
            == 403
        )
        revoked = operator.post(
            f"/api/v1/certificates/{cert_id}/revoke", json={"reason": "superseded"}
        )
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["status"] == "revoked"
        assert revoked.json()["revocation_reason"] == "superseded"


def test_each_role_is_refused_what_it_may_not_do(broker: Broker) -> None:
    with (
        broker.client("viewer") as viewer,
        broker.client("operator") as operator,
        broker.client("admin") as admin,
    ):
        # viewer: reads, never changes
        assert viewer.get("/api/v1/certificates").status_code == 200
        assert viewer.get("/api/v1/accounts").status_code == 200
        assert request(viewer, "viewer.example.com").status_code == 403
        assert viewer.post("/api/v1/certificates/1/renew").status_code == 403
        assert viewer.delete("/api/v1/certificates/1").status_code == 403
        # operator: certificates, not accounts, users, tokens or settings
        assert viewer.get("/api/v1/users").status_code == 403
        assert operator.get("/api/v1/users").status_code == 403
        assert operator.get("/api/v1/tokens").status_code == 403
        new_token = {"name": "x", "role": "admin"}
        assert operator.post("/api/v1/tokens", json=new_token).status_code == 403
        body = {"directory": broker.cli.pebble.directory_url, "agree_tos": True}  # type: ignore[union-attr]
        assert operator.post("/api/v1/accounts", json=body).status_code == 403
        settings = {"renew_before_days": 20, "notify_to": [], "console_certificate_id": None}
        assert operator.put("/api/v1/settings", json=settings).status_code == 403
        refused = operator.post(
            "/api/v1/users", json={"name": "eve", "role": "admin", "password": "x" * 12}
        )
        assert refused.status_code == 403
        assert "admin" in refused.json()["detail"]
        # admin: all of it
        made = admin.post(
            "/api/v1/users", json={"name": "olivia", "role": "operator", "password": "o" * 12}
        )
        assert made.status_code == 201, made.text
        assert "o" * 12 not in json.dumps(made.json()) and "argon2" not in made.text
        assert admin.put("/api/v1/settings", json=settings).json()["renew_before_days"] == 20
        created = admin.post("/api/v1/tokens", json={"name": "temp", "role": "viewer"})
        assert created.status_code == 201 and created.json()["token"].startswith("cbt_")
        listed = admin.get("/api/v1/tokens").json()
        assert all("token" not in t for t in listed)  # shown once, never listed
        with httpx.Client(
            base_url=broker.url,
            headers={"Authorization": f"Bearer {created.json()['token']}"},
            trust_env=False,
        ) as temp:
            assert temp.get("/api/v1/certificates").status_code == 200
            assert admin.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 200
            assert temp.get("/api/v1/certificates").status_code == 401


def test_a_name_limited_token_sees_and_orders_only_its_names(broker: Broker) -> None:
    with broker.client("limited") as shop, broker.client("operator") as operator:
        other = request(operator, "blog.example.com").json()["id"]
        mine = request(shop, "pay.shop.example.com", "cart.shop.example.com")
        assert mine.status_code == 202, mine.text
        outside = request(shop, "pay.shop.example.com", "blog.example.com")
        assert outside.status_code == 403
        assert "*.shop.example.com" in outside.json()["detail"]

        listed = shop.get("/api/v1/certificates", params={"limit": 500}).json()["items"]
        assert [c["id"] for c in listed] == [mine.json()["id"]]
        assert shop.get(f"/api/v1/certificates/{other}").status_code == 404
        assert shop.get(f"/api/v1/certificates/{other}/chain").status_code == 404
        assert shop.post(f"/api/v1/certificates/{other}/renew").status_code == 404
        assert shop.get("/api/v1/dashboard").status_code == 403
        done = sse_events(shop, f"/api/v1/certificates/{mine.json()['id']}/progress/stream")
        assert done[-1][1]["status"] == "valid"
        events = shop.get("/api/v1/events", params={"limit": 1000}).json()
        assert events and {e["certificate_id"] for e in events} == {mine.json()["id"]}

    tokens = broker.cli.json("token", "list")
    shop_token = next(t for t in tokens if t["name"] == "shop")
    assert shop_token["names"] == ["*.shop.example.com"]
    assert shop_token["last_used_at"] and shop_token["last_used_from"] == "127.0.0.1"


def test_idempotency_key_orders_once(broker: Broker) -> None:
    with broker.client("operator") as operator:
        key = {"Idempotency-Key": "order-7f3a"}
        before = len(operator.get("/api/v1/certificates", params={"limit": 500}).json()["items"])
        first = operator.post(
            "/api/v1/certificates", json={"names": ["once.example.com"]}, headers=key
        )
        again = operator.post(
            "/api/v1/certificates", json={"names": ["once.example.com"]}, headers=key
        )
        after = len(operator.get("/api/v1/certificates", params={"limit": 500}).json()["items"])
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"]
        assert after == before + 1
        other = operator.post(
            "/api/v1/certificates", json={"names": ["twice.example.com"]}, headers=key
        )
        assert other.status_code == 409
        assert "another request" in other.json()["detail"]


def test_pages_follow_a_keyset_cursor_with_filters_and_sorting(broker: Broker) -> None:
    with broker.client("operator") as operator:
        for n in range(5):
            assert request(operator, f"page{n}.list.example.com").status_code == 202
        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, "search": ".list.example", "sort": "-id"}
            if cursor:
                params["cursor"] = cursor
            page = operator.get("/api/v1/certificates", params=params).json()
            seen += [c["id"] for c in page["items"]]
            assert len(page["items"]) <= 2
            cursor = page["next"]
            if cursor is None:
                break
        assert len(seen) == 5 and seen == sorted(seen, reverse=True)
        wrong = operator.get(
            "/api/v1/certificates", params={"cursor": cursor or "bm9wZQ", "sort": "id"}
        )
        assert wrong.status_code == 422 and wrong.json()["detail"].startswith("cursor")


def test_a_callers_mistakes_are_4xx_problems_naming_the_field(broker: Broker) -> None:
    with broker.client("operator") as operator:
        unknown = operator.post(
            "/api/v1/certificates", json={"names": ["a.example.com"], "colour": "red"}
        )
        assert unknown.status_code == 422 and unknown.json()["field"] == "colour"
        bad_name = request(operator, "not a name")
        assert bad_name.status_code == 422 and "not a name" in bad_name.json()["detail"]
        broken = operator.post(
            "/api/v1/certificates",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert 400 <= broken.status_code < 500
        assert broken.headers["content-type"] == "application/problem+json"
        missing = operator.get("/api/v1/certificates/999999")
        assert missing.status_code == 404 and "999999" in missing.json()["detail"]
        status = operator.get("/api/v1/certificates", params={"status": "sleepy"})
        assert status.status_code == 422 and status.json()["field"] == "status"
    with broker.client("admin") as admin:
        body = {"directory": broker.cli.pebble.directory_url, "agree_tos": True, "name": "a/b"}  # type: ignore[union-attr]
        slash = admin.post("/api/v1/accounts", json=body)
        assert slash.status_code == 422 and "'/'" in slash.json()["detail"]
    # Nothing was stored for any of them.
    assert not [c for c in broker.cli.json("cert", "list") if "colour" in json.dumps(c)]


def test_the_last_enabled_admin_cannot_be_disabled_or_demoted(broker: Broker) -> None:
    with broker.client("admin") as admin:
        refused = admin.patch("/api/v1/users/admin", json={"enabled": False})
        assert refused.status_code == 422 and "last enabled admin" in refused.json()["detail"]
        assert admin.patch("/api/v1/users/admin", json={"role": "viewer"}).status_code == 422
    cli = broker.cli
    proc = cli("user", "disable", "admin", check=False)
    assert proc.returncode == 2 and "last enabled admin" in proc.stderr
    cli("user", "add", "second", "--role", "admin", "--password-stdin", input="s" * 12 + "\n")
    cli("user", "role", "admin", "operator")  # another admin exists now
    users = {u["name"]: u for u in cli.json("user", "list")}
    assert users["admin"]["role"] == "operator" and users["second"]["role"] == "admin"
    cli("user", "role", "admin", "admin")


def test_the_interactive_docs_are_served_by_the_broker_itself(broker: Broker) -> None:
    with broker.client(None) as anonymous:
        page = anonymous.get("/api/docs")
        assert page.status_code == 200 and "/api/v1/openapi.json" in page.text
        assert "cdn" not in page.text.lower()
        script = anonymous.get("/api/docs/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        schema = anonymous.get("/api/v1/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/api/v1/certificates/{cert_id}/progress/stream" in schema["paths"]


def test_open_progress_streams_do_not_hold_up_other_requests(broker: Broker) -> None:
    """More streams than the API has threads for requests (8): each waits without one.
    (A stream that held a thread would keep the ninth from starting until its heartbeat,
    15 s, after the 10 s each request here is given.)"""
    with broker.client("operator") as operator:
        body = {"names": ["stream.example.com"], "challenge": "dns-01", "dns_account": "manual"}
        cert_id = operator.post("/api/v1/certificates", json=body).json()["id"]

        def awaiting() -> bool:
            shown = operator.get(f"/api/v1/certificates/{cert_id}/progress").json()
            return bool(shown["order"] and shown["order"]["state"] == "awaiting-dns")

        wait_until("the order to wait for its records", awaiting, serve=broker.serve)
        with contextlib.ExitStack() as streams:
            for _ in range(20):
                stream = streams.enter_context(
                    operator.stream(
                        "GET", f"/api/v1/certificates/{cert_id}/progress/stream", timeout=10
                    )
                )
                assert next(stream.iter_lines()).startswith("event: progress")
            listed = operator.get("/api/v1/certificates", timeout=10)
            assert listed.status_code == 200 and listed.json()["items"]


def test_a_console_session_calls_the_api_with_its_csrf_token_only(broker: Broker) -> None:
    with httpx.Client(base_url=broker.url, trust_env=False, timeout=60) as browser:
        form = browser.get("/login").text
        login_token = re.search(r'name="login_token" value="([^"]+)"', form)
        assert login_token
        logged_in = browser.post(
            "/login",
            data={"name": "admin", "password": ADMIN_PASSWORD, "next": "/",
                  "login_token": login_token.group(1)},
        )  # fmt: skip
        assert logged_in.status_code in (302, 303), logged_in.text
        page = browser.get("/certificates/new").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf
        assert browser.get("/api/v1/certificates").status_code == 200  # reading needs none
        body = {"names": ["session.example.com"]}
        forged = browser.post("/api/v1/certificates", json=body)
        assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["detail"]
        wrong = browser.post("/api/v1/certificates", json=body, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        made = browser.post(
            "/api/v1/certificates", json=body, headers={"X-CSRF-Token": csrf.group(1)}
        )
        assert made.status_code == 202, made.text


def test_a_body_too_large_is_refused_before_anyone_is_asked_who_sent_it(broker: Broker) -> None:
    big = b'{"names": ["' + b"a" * (2 << 20) + b'"]}'
    with broker.client(None) as anonymous:
        declared = anonymous.post(
            "/api/v1/certificates", content=big, headers={"content-type": "application/json"}
        )

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
            for start in range(0, len(big), 65536):
                yield big[start : start + 65536]

        streamed = anonymous.post(
            "/api/v1/certificates", content=chunks(), headers={"content-type": "application/json"}
        )
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert "KiB" in answer.json()["detail"]


def test_a_trusted_reverse_proxy_names_the_client_and_the_scheme(broker: Broker) -> None:
    """Behind a proxy on the same machine (trusted by default), the client's address is
    what a token's last use records, and a session cookie over https is Secure."""
    with broker.client("admin") as admin:
        made = admin.post("/api/v1/tokens", json={"name": "proxied", "role": "viewer"}).json()
    headers = {"Authorization": f"Bearer {made['token']}", "X-Forwarded-For": "203.0.113.5"}
    with httpx.Client(base_url=broker.url, trust_env=False) as proxied:
        assert proxied.get("/api/v1/certificates", headers=headers).status_code == 200
        form = proxied.get("/login").text
        token = re.search(r'name="login_token" value="([^"]+)"', form)
        assert token
        logged_in = proxied.post(
            "/login",
            data={"name": "admin", "password": ADMIN_PASSWORD, "next": "/",
                  "login_token": token.group(1)},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"},
        )  # fmt: skip
    cookie = next(
        v for k, v in logged_in.headers.multi_items()
        if k == "set-cookie" and v.startswith("certbroker_session=")
    )  # fmt: skip
    assert "secure" in cookie.lower() and "httponly" in cookie.lower()
    listed = {t["name"]: t for t in broker.cli.json("token", "list")}
    assert listed["proxied"]["last_used_from"] == "203.0.113.5"
