"""Mail end to end: certificates from a real Pebble, mails to a real SMTP server (aiosmtpd
in its own process, STARTTLS with a test certificate, a password checked), read back from
what the server received.

Time moves forward for the store the way it does for a certificate: its not-after comes
closer (the stored date is moved), so each expiry threshold is entered in turn.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from certbroker.domain.errors import AcmeProblem
from certbroker.store.db import make_engine
from certbroker.store.events import failed_attempt
from certbroker.store.schema import certificates, mail_deliveries, orders
from tests.conftest import Cli
from tests.support.ports import free_port
from tests.support.serve import api_url, start_api, start_serve, stop_serve, wait_until
from tests.support.smtp import SmtpServer


@pytest.fixture
def mcli(cli: Cli, smtp: SmtpServer) -> Cli:
    smtp.clear()
    cli.env.update(smtp.env(CERTBROKER_PUBLIC_URL="https://certs.example.com"))
    cli.register()  # contact: main@example.com
    return cli


def _store(cli: Cli, table: Any, **values: Any) -> None:
    engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
    with engine.begin() as conn:
        conn.execute(update(table).values(**values))
    engine.dispose()


def _expires_in(cli: Cli, cert_id: int, days: float) -> datetime:
    """Move the clock: the certificate's not-after `days` from now."""
    when = datetime.now(UTC) + timedelta(days=days)
    engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
    with engine.begin() as conn:
        conn.execute(
            update(certificates).where(certificates.c.id == cert_id).values(not_after=when)
        )
    engine.dispose()
    return when


def _fail_again(cli: Cli, kind: str | None) -> str:
    """Another failed attempt of certificate 1 written as the order runner writes one: of
    the alarm's kind (None) or of `kind`. Returns the alarm's kind before."""
    engine = make_engine(f"sqlite:///{cli.data_dir / 'certbroker.db'}")
    with engine.begin() as conn:
        held = conn.execute(select(certificates.c.alarm_kind)).scalar_one()
        order_id = conn.execute(select(func.max(orders.c.id))).scalar_one()
        problem = AcmeProblem(type=kind or held, detail="injected by the test")
        failed_attempt(conn, datetime.now(UTC), 1, order_id, "failed again", problem, final=False)
    engine.dispose()
    return str(held)


def _subjects(smtp: SmtpServer) -> list[str]:
    return [str(m["Subject"]) for _, m in smtp.mails()]


def test_a_test_mail_goes_over_starttls_and_bad_settings_are_one_clear_line(
    mcli: Cli, smtp: SmtpServer
) -> None:
    out = mcli("notify", "test", "--to", "ops@example.com")
    assert "the SMTP server answered: 250 2.0.0 Ok: queued as T" in out.stdout
    ((meta, message),) = smtp.mails()
    assert meta["tls"] and meta["authenticated"] and meta["rcpt_tos"] == ["ops@example.com"]
    assert message["Subject"] == "[certbroker] test mail"
    assert message.get_content_type() == "multipart/alternative"

    wrong = mcli("notify", "test", "--to", "ops@example.com",
                 env={"CERTBROKER_SMTP_PASSWORD": "nope"}, check=False)  # fmt: skip
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        f"error: the SMTP server at 127.0.0.1:{smtp.port} refused user 'mailer''s password "
        "(535 5.7.8 Authentication credentials invalid)"
    ]
    closed = mcli("notify", "test", "--to", "ops@example.com",
                  env={"CERTBROKER_SMTP_PORT": "1"}, check=False)  # fmt: skip
    assert closed.returncode == 1 and "cannot reach the SMTP server at 127.0.0.1:1" in closed.stderr
    plain = mcli("notify", "test", "--to", "ops@example.com",
                 env={"CERTBROKER_SMTP_SECURITY": "none"}, check=False)  # fmt: skip
    assert plain.returncode == 2 and "does not accept a log-in here" in plain.stderr
    untrusted = mcli("notify", "test", "--to", "ops@example.com",
                     env={"CERTBROKER_SMTP_CA_FILE": ""}, check=False)  # fmt: skip
    assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    bad = mcli("notify", "test", "--to", "ops@example.com",
               env={"CERTBROKER_SMTP_SECURITY": "ssl"}, check=False)  # fmt: skip
    assert bad.returncode == 2 and "choose none, starttls or tls" in bad.stderr
    assert len(smtp.mails()) == 1  # none of those sent anything


def test_each_expiry_threshold_is_mailed_once_and_a_replaced_certificate_not_at_all(
    mcli: Cli, smtp: SmtpServer
) -> None:
    mcli("cert", "request", "soon.example.com", "--wait")
    mcli("cert", "request", "old.example.com", "--wait")
    mcli("cert", "request", "old.example.com", "--wait")  # 3 replaces 2 (later not-after)
    _expires_in(mcli, 2, 2.5)
    assert "0 mail(s) sent" in mcli("notify", "run").stdout  # nothing due for 1 and 2

    not_after = _expires_in(mcli, 1, 29.5)
    assert "1 expiry warning(s) written, 1 mail(s) sent" in mcli("notify", "run").stdout
    ((meta, message),) = smtp.mails()
    assert meta["rcpt_tos"] == ["main@example.com"]  # nobody else: the account's contact
    assert message["Subject"] == "[certbroker] certificate 1 soon.example.com expires in 29 day(s)"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for body in (text, html):
        assert "soon.example.com" in body and "29 days left" in body
        assert "https://certs.example.com/certificates/1" in body
        assert f"{not_after:%Y-%m-%d %H:%M}" in body
    # Looked at again, in new processes: no second mail.
    mcli("notify", "run")
    mcli("notify", "run")
    assert len(smtp.mails()) == 1

    _expires_in(mcli, 1, 13.5)  # 14 entered
    mcli("notify", "run")
    _expires_in(mcli, 1, 2.5)  # 7 and 3 entered since: one mail, about 3
    mcli("notify", "run")
    mcli("notify", "run")
    assert _subjects(smtp)[1:] == [
        "[certbroker] certificate 1 soon.example.com expires in 13 day(s)",
        "[certbroker] certificate 1 soon.example.com expires in 2 day(s)",
    ]
    expiring = [e for e in mcli.json("events") if e["kind"] == "expiring"]
    assert [e["certificate_id"] for e in expiring] == [1, 1, 1]  # never 2: 3 replaced it
    log = mcli.json("notify", "log")
    assert [d["state"] for d in log] == ["sent"] * 3
    assert all(d["answer"].startswith("250 ") for d in log)


def test_serve_mails_once_across_a_restart_to_the_certificates_own_recipients(
    mcli: Cli, smtp: SmtpServer
) -> None:
    mcli("cert", "request", "serve-mail.example.com", "--wait")
    mcli("notify", "recipients", "1", "--to", "pki@example.com", "--to", "oncall@example.com")
    _expires_in(mcli, 1, 6.5)
    for _ in range(2):  # a restart does not send again
        serve = start_serve(mcli)
        try:
            wait_until("the expiry mails", lambda: len(smtp.mails()) >= 2, serve=serve)
            mcli("notify", "run")  # another process looking at the same time
        finally:
            stop_serve(serve)
    mails = smtp.mails()
    assert sorted(m["rcpt_tos"][0] for m, _ in mails) == ["oncall@example.com", "pki@example.com"]
    assert {str(m["Subject"]) for _, m in mails} == {
        "[certbroker] certificate 1 serve-mail.example.com expires in 6 day(s)"
    }
    serve = start_api(mcli)
    try:
        scraped = httpx.get(api_url(mcli) + "/metrics", trust_env=False, timeout=30).text
    finally:
        stop_serve(serve)
    sent = 'certbroker_notifications_total{channel="mail",result="sent"} 2.0'
    assert sent in scraped.splitlines()


def test_failure_alarm_acknowledgement_revocation_and_the_daily_digest(
    mcli: Cli, smtp: SmtpServer
) -> None:
    mcli.env["CERTBROKER_NOTIFY_TO"] = "ops@example.com,lead@example.com"
    # The CA cannot reach the responder: the first failure raises the alarm.
    failed = mcli("cert", "request", "fails.example.com", "--wait",
                  env={"CERTBROKER_HTTP01_PORT": str(free_port())}, check=False)  # fmt: skip
    assert failed.returncode == 1
    mcli("notify", "run")
    raised = [m for _, m in smtp.mails() if "failing" in str(m["Subject"])]
    assert sorted(str(m["To"]) for m in raised) == ["lead@example.com", "ops@example.com"]
    text = raised[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "fails.example.com" in text and "CA's error: urn:ietf:params:acme:error:" in text

    refused = mcli("alarms", "ack", "1", "--until", "3d", "--reason", "", check=False)
    assert refused.returncode == 2 and "say why" in refused.stderr
    mcli("alarms", "ack", "1", "--until", "3d", "--reason", "DNS moves on Monday")
    (alarm,) = mcli.json("alarms")
    assert alarm["acknowledged"]["reason"] == "DNS moves on Monday"
    assert alarm["acknowledged"]["by"].endswith("(cli)")
    assert "acknowledged by" in mcli("alarms").stdout

    # Another failure of the same kind keeps it muted; a new kind raises it again (and mails).
    kind = _fail_again(mcli, None)
    assert mcli.json("alarms")[0]["acknowledged"] is not None
    _fail_again(mcli, "urn:ietf:params:acme:error:rateLimited")
    assert mcli.json("alarms")[0]["acknowledged"] is None
    mcli("notify", "run")
    again = [str(m["Subject"]) for _, m in smtp.mails()]
    assert again.count("[certbroker] certificate 1 fails.example.com failing") == 4
    assert kind != "urn:ietf:params:acme:error:rateLimited"

    # Digest for ops: issuance (asked for) and revocation wait for the day's digest; lead
    # gets each at once.
    smtp.clear()
    mcli("notify", "set", "--digest-to", "ops@example.com", "--on-issue")
    mcli("cert", "request", "ok.example.com", "--wait")
    mcli("cert", "revoke", "2", "--reason", "superseded")
    mcli("notify", "run")
    assert [(m["rcpt_tos"], str(s["Subject"])) for m, s in smtp.mails()] == [
        (["lead@example.com"], "[certbroker] certificate 2 ok.example.com issued"),
        (["lead@example.com"], "[certbroker] certificate 2 ok.example.com revoked"),
    ]
    queued = mcli.json("notify", "log", "--state", "digest")
    assert [d["recipient"] for d in queued] == ["ops@example.com"] * 2
    _store(mcli, mail_deliveries, next_try_at=datetime.now(UTC) - timedelta(minutes=1))
    mcli("notify", "run")
    digest = [m for meta, m in smtp.mails() if meta["rcpt_tos"] == ["ops@example.com"]]
    assert [str(m["Subject"]) for m in digest] == ["[certbroker] daily digest: 2 event(s)"]
    body = digest[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "2 things happened" in body and "issued" in body and "revoked" in body


def test_bad_mail_settings_are_refused_before_anything_is_stored(mcli: Cli) -> None:
    for args, message in [
        (("--security", "ssl"), "choose none, starttls or tls"),
        (("--port", "70000"), "a TCP port"),
        (("--thresholds", "30,x"), "'x' is not a whole number of days"),
        (("--from", "nobody"), "is not an e-mail address"),
        (("--digest-to", "ops"), "is not an e-mail address"),
    ]:
        out = mcli("notify", "set", *args, check=False)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
    assert mcli.json("notify", "settings")["stored"] == []
    out = mcli("notify", "set", "--password-stdin", input="hunter2-smtp\n")
    assert "hunter2-smtp" not in out.stdout
    shown = mcli.json("notify", "settings")
    assert shown["password"] == "(set)" and shown["stored"] == ["password"]
    db = (mcli.data_dir / "certbroker.db").read_bytes()
    assert b"hunter2-smtp" not in db  # sealed at rest
    (change,) = [e for e in mcli.json("audit") if e["action"] == "settings.mail"]
    assert change["details"] == {"password": "(secret)"}  # changed, never shown
    bad = mcli("notify", "recipients", "9", "--to", "a@example.com", check=False)
    assert bad.returncode == 2 and "no certificate with ID 9" in bad.stderr
    env_bad = mcli("notify", "settings", env={"CERTBROKER_EXPIRY_THRESHOLDS": "0"}, check=False)
    assert env_bad.returncode == 2 and "CERTBROKER_EXPIRY_THRESHOLDS" in env_bad.stderr


def test_the_api_sets_mail_sends_a_test_and_acknowledges_for_operators(
    mcli: Cli, smtp: SmtpServer
) -> None:
    admin = mcli("token", "create", "--name", "boss", "--role", "admin").stdout.split()[-1]
    operator = mcli("token", "create", "--name", "ops", "--role", "operator").stdout.split()[-1]
    # The CA cannot reach the responder (a port of this test's own, not one a parallel
    # test binds too): certificate 1 fails and raises its alarm.
    failed = mcli("cert", "request", "api-fails.example.com", "--wait",
                  env={"CERTBROKER_HTTP01_PORT": str(free_port())}, check=False)  # fmt: skip
    assert failed.returncode == 1 and "certificate 1" in failed.stdout + failed.stderr, failed
    serve = start_api(mcli, CERTBROKER_SMTP_HOST="")  # no SMTP configured: the API sets it
    try:
        base = api_url(mcli) + "/api/v1"

        def call(method: str, path: str, token: str, **kw: Any) -> httpx.Response:
            return httpx.request(method, base + path, headers={"Authorization": f"Bearer {token}"},
                                 trust_env=False, timeout=30, **kw)  # fmt: skip

        assert call("GET", "/settings/mail", operator).status_code == 403
        unset = call("POST", "/notify/test", admin, json={"to": "ops@example.com"})
        assert unset.status_code == 422 and "no SMTP server is set" in unset.json()["detail"]
        bad = call("PATCH", "/settings/mail", admin, json={"security": "ssl"})
        assert bad.status_code == 422 and "choose none, starttls or tls" in bad.json()["detail"]
        smtp_at = {"host": "127.0.0.1", "port": smtp.port, "password": smtp.password}
        changed = call("PATCH", "/settings/mail", admin, json=smtp_at)
        assert changed.status_code == 200, changed.text
        assert changed.json()["password"] == "(set)" and smtp.password not in changed.text
        sent = call("POST", "/notify/test", admin, json={"to": "ops@example.com"})
        assert sent.status_code == 200, sent.text
        assert sent.json()["answer"].startswith("250 2.0.0 Ok: queued as")
        # (serve's outbox may mail the alarm to the account's contact meanwhile: the
        # alarm came before SMTP was set, and whether it is passed over depends on
        # whether serve looked before the PATCH.)
        tests = [m["rcpt_tos"] for m, s in smtp.mails() if s["Subject"] == "[certbroker] test mail"]
        assert tests == [["ops@example.com"]]

        until = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        acked = call("POST", "/certificates/1/alarm/acknowledge", operator,
                     json={"until": until, "reason": "vendor ticket 42"})  # fmt: skip
        assert acked.status_code == 200, acked.text
        assert acked.json()["acknowledged"]["by"] == "ops"
        past = call("POST", "/certificates/1/alarm/acknowledge", operator,
                    json={"until": "2020-01-01T00:00:00Z", "reason": "x"})  # fmt: skip
        assert past.status_code == 422
        missing = call("POST", "/certificates/9/alarm/acknowledge", operator,
                       json={"until": until, "reason": "x"})  # fmt: skip
        assert missing.status_code == 404
        log = call("GET", "/mail-deliveries", admin)
        assert log.status_code == 200 and isinstance(log.json(), list)
    finally:
        stop_serve(serve)
