"""The audit log of a real `certbroker serve` on Pebble: a private key exported through
the API (an admin token) or the CLI is recorded naming who did it and from where; a
viewer's refused export and an operator's refused read of the log are recorded too; a
DNS account's TSIG secret never reaches the log; the database refuses to change or
delete a record; `certbroker audit --actor` filters; the console's /audit page is the
admins' (an operator is refused, and that refusal is recorded)."""

from __future__ import annotations

import contextlib
import getpass
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, console_session, start_api, stop_serve

ADMIN_PASSWORD = "audit-admin-password"
OPERATOR_PASSWORD = "audit-operator-password"
TSIG_SECRET = "c2VjcmV0LXRzaWctdmFsdWUtZm9yLWF1ZGl0LXRlc3Q="


def token(cli: Cli, *args: str) -> str:
    return cli("token", "create", *args).stdout.strip().splitlines()[-1]


@dataclass
class Site:
    cli: Cli
    serve: subprocess.Popen[str]
    url: str
    tokens: dict[str, str]
    cert_id: int

    def api(self, who: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False)

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        """Every record matching, newest first, through the API as the admin token."""
        with self.api("admin") as admin:
            answer = admin.get("/api/v1/audit", params={"limit": 500, **params})
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    @contextlib.contextmanager
    def console(self, name: str, password: str) -> Iterator[httpx.Client]:
        """An HTTP client logged in to the console (the log-in form, as a browser sends it)."""
        with console_session(self.url, name, password) as client:
            yield client


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("audit") / "data", pebble)
    cli.register()
    cert = cli.json("cert", "request", "audit.example.com", "--wait")
    tokens = {
        "admin": token(cli, "--name", "audit-admin", "--role", "admin"),
        "operator": token(cli, "--name", "audit-operator", "--role", "operator"),
        "viewer": token(cli, "--name", "audit-viewer", "--role", "viewer"),
    }
    serve = start_api(cli, CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD)
    try:
        cli(
            "user", "add", "op", "--role", "operator", "--password-stdin",
            input=OPERATOR_PASSWORD + "\n",
        )  # fmt: skip
        yield Site(cli, serve, api_url(cli), tokens, int(cert["id"]))
    finally:
        stop_serve(serve)


def test_a_key_exported_through_the_api_is_recorded_naming_the_token_and_address(
    site: Site,
) -> None:
    before = {r["id"] for r in site.audit(action="certificate.export-key")}
    with site.api("admin") as admin:
        answer = admin.post(f"/api/v1/certificates/{site.cert_id}/export", json={"format": "pem"})
        chain = admin.post(
            f"/api/v1/certificates/{site.cert_id}/export", json={"format": "fullchain"}
        )
    assert answer.status_code == 200, answer.text
    assert chain.status_code == 200, chain.text
    new = [r for r in site.audit(action="certificate.export-key") if r["id"] not in before]
    assert len(new) == 1, new  # the key's export; the chain alone holds no key
    record = new[0]
    assert (record["actor_kind"], record["actor"]) == ("token", "audit-admin")
    assert record["address"] == "127.0.0.1"
    assert (record["object_type"], record["object_id"]) == ("certificate", str(site.cert_id))
    assert record["outcome"] == "ok"
    assert record["details"]["format"] == "pem"
    assert "PRIVATE KEY" not in str(record)


def test_a_key_exported_through_the_cli_is_recorded_as_the_cli_and_its_os_user(
    site: Site, tmp_path: Any
) -> None:
    out = tmp_path / "combined.pem"
    site.cli("cert", "export", str(site.cert_id), "--format", "combined", "--out", str(out))
    assert "PRIVATE KEY" in out.read_text()
    found = site.cli.json(
        "audit", "--action", "certificate.export-key", "--actor", getpass.getuser()
    )
    mine = [r for r in found if r["details"].get("out") == str(out)]
    assert len(mine) == 1, found
    assert (mine[0]["actor_kind"], mine[0]["address"]) == ("cli", "local")
    assert mine[0]["details"]["format"] == "combined"


def test_a_viewers_refused_export_is_recorded_as_refused(site: Site) -> None:
    with site.api("viewer") as viewer:
        answer = viewer.post(f"/api/v1/certificates/{site.cert_id}/export", json={"format": "pem"})
    assert answer.status_code == 403
    refused = [
        r
        for r in site.audit(actor="audit-viewer", action="access.refused")
        if r["details"]["path"] == f"/api/v1/certificates/{site.cert_id}/export"
    ]
    assert refused, site.audit(actor="audit-viewer")
    record = refused[0]
    assert record["outcome"] == "refused"
    assert (record["actor_kind"], record["address"]) == ("token", "127.0.0.1")
    assert record["details"]["method"] == "POST" and record["details"]["status"] == 403
    assert "private keys" in record["details"]["reason"]
    # Nothing was exported for the viewer.
    assert not site.audit(actor="audit-viewer", action="certificate.export-key")


def test_an_operators_read_of_the_audit_log_is_refused_and_recorded(site: Site) -> None:
    with site.api("operator") as operator:
        answer = operator.get("/api/v1/audit")
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"
    refused = site.audit(actor="audit-operator", action="access.refused")
    assert any(
        r["details"]["path"] == "/api/v1/audit" and r["details"]["method"] == "GET" for r in refused
    ), refused


def test_a_dns_accounts_tsig_secret_never_reaches_the_audit_log(site: Site) -> None:
    site.cli(
        "dns", "add", "audited", "--provider", "rfc2136", "--server", "127.0.0.1:5399",
        "--tsig-key-name", "audit-key", "--zone", "audit.example.org",
        env={"CERTBROKER_DNS_TSIG_SECRET": TSIG_SECRET},
    )  # fmt: skip
    records = site.audit(action="dns-account.add")
    added = [r for r in records if r["object_id"] == "audited"]
    assert len(added) == 1
    assert added[0]["actor_kind"] == "cli"
    assert added[0]["details"]["options"]["tsig_key_name"] == "audit-key"
    assert added[0]["details"]["hidden_options"] == {"tsig_secret": "(secret)"}
    # Not in what the API, the CLI or the table itself holds.
    with site.api("admin") as admin:
        assert TSIG_SECRET not in admin.get("/api/v1/audit", params={"limit": 500}).text
    assert TSIG_SECRET not in site.cli("audit", "--json").stdout
    with sqlite3.connect(site.cli.data_dir / "certbroker.db") as db:
        rows = db.execute("SELECT * FROM audit_log").fetchall()
    assert rows and TSIG_SECRET not in repr(rows)


def test_the_database_refuses_to_change_or_delete_an_audit_record(site: Site) -> None:
    db = sqlite3.connect(site.cli.data_dir / "certbroker.db", timeout=30)
    try:
        count = db.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        assert count > 0
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit_log SET actor = 'someone else'")
        db.rollback()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit_log")
        db.rollback()
        assert db.execute("SELECT count(*) FROM audit_log").fetchone()[0] >= count
        assert not db.execute(
            "SELECT count(*) FROM audit_log WHERE actor = 'someone else'"
        ).fetchone()[0]
    finally:
        db.close()


def test_the_cli_filters_the_audit_log_by_actor(site: Site) -> None:
    with site.api("operator") as operator:  # something the operator token did
        assert operator.get("/api/v1/certificates").status_code == 200
        assert operator.get("/api/v1/audit").status_code == 403
    found = site.cli.json("audit", "--actor", "audit-operator")
    assert found and {r["actor"] for r in found} == {"audit-operator"}
    ids = [r["id"] for r in found]
    assert ids == sorted(ids)  # newest last, as `certbroker events`
    assert site.cli.json("audit", "--actor", "nobody-at-all") == []
    text = site.cli("audit", "--actor", "audit-operator").stdout
    assert "token:audit-operator from 127.0.0.1 access.refused REFUSED" in text


def test_the_console_audit_page_is_the_admins_and_refused_to_an_operator(site: Site) -> None:
    with site.api("admin") as api:  # a record of its own to find (tests may run apart)
        exported = api.post(f"/api/v1/certificates/{site.cert_id}/export", json={"format": "pem"})
        assert exported.status_code == 200, exported.text
    with site.console("admin", ADMIN_PASSWORD) as admin:
        page = admin.get("/audit", params={"action": "certificate.export-key"})
        assert page.status_code == 200
        assert 'href="/audit"' in page.text  # in the navigation
        assert "certificate.export-key" in page.text and "audit-admin" in page.text
        assert "access.refused" not in page.text  # the filter holds
    with site.console("op", OPERATOR_PASSWORD) as operator:
        assert 'href="/audit"' not in operator.get("/").text  # not in an operator's menu
        refused = operator.get("/audit")
        assert refused.status_code == 403
    records = site.audit(actor="op", action="access.refused")
    assert any(r["details"]["path"] == "/audit" for r in records), records
    assert records[0]["actor_kind"] == "user"
    logins = site.audit(actor="admin", action="user.login")
    assert logins and logins[0]["outcome"] == "ok"


def test_a_failed_log_in_is_recorded_without_the_password(site: Site) -> None:
    client = httpx.Client(base_url=site.url, timeout=60, trust_env=False)
    with client:
        form = client.get("/login")
        found = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert found
        answer = client.post(
            "/login",
            data={"name": "op", "password": "a-wrong-password-1", "login_token": found.group(1)},
        )
    assert answer.status_code == 401
    failed = [r for r in site.audit(action="user.login") if r["outcome"] == "refused"]
    assert failed and failed[0]["object_id"] == "op"
    assert failed[0]["address"] == "127.0.0.1"
    assert "a-wrong-password-1" not in str(failed)
