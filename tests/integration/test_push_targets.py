"""Push targets against a real Pebble and a real OpenSSH server: a certificate issued for
real is installed into a directory here and over SSH, with its modes, reloaded; every
renewal goes out by itself; a failing reload puts the old files back, raises an alarm
and is tried again until it works; an SSH host whose key is not the known one is
refused with nothing written."""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from playwright.sync_api import Browser, expect

from certbroker.crypto.keys import key_matches_certificate, load_private_key
from tests.conftest import Cli
from tests.support.browser import log_in, new_page
from tests.support.serve import api_url, start_api, start_serve, stop_serve, wait_until
from tests.support.sshd import Sshd, run_sshd


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fingerprint(fullchain: Path) -> str:
    leaf = x509.load_pem_x509_certificates(fullchain.read_bytes())[0]
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()


def _show(cli: Cli) -> dict[str, Any]:
    shown: dict[str, Any] = cli.json("cert", "show", "1")
    return shown


def _assert_installed(cli: Cli, directory: Path, seen: Path) -> dict[str, Any]:
    """The certificate in use is in `directory`, key 0600, matching, and the reload saw it."""
    shown = _show(cli)
    fullchain, key = directory / "fullchain.pem", directory / "privkey.pem"
    assert _fingerprint(fullchain) == shown["fingerprint_sha256"]
    assert _mode(key) == 0o600 and _mode(fullchain) == 0o644
    leaf = x509.load_pem_x509_certificates(fullchain.read_bytes())[0]
    assert key_matches_certificate(load_private_key(key.read_bytes()), leaf)
    assert seen.read_bytes() == fullchain.read_bytes()  # the reload ran on the new files
    return shown


def _issued(cli: Cli, name: str) -> None:
    cli.register()
    cli("cert", "request", name, "--wait")


def test_a_local_target_gets_the_certificate_and_every_renewal(cli: Cli, tmp_path: Path) -> None:
    _issued(cli, "push.example.com")
    web, seen = tmp_path / "web", tmp_path / "seen.pem"
    web.mkdir()
    reload = f"cp {web}/fullchain.pem {seen} && echo reloaded"
    cli("target", "add", "web", "--local", str(web), "--reload", reload)
    out = cli("target", "attach", "web", "1")
    assert "queued for web" in out.stdout

    out = cli("deploy", "1", "--wait")
    assert "target web: serial" in out.stdout and "deployed" in out.stdout
    first = _assert_installed(cli, web, seen)
    (target,) = first["targets"]
    assert target["target"] == "web" and target["deployment"]["state"] == "done"
    assert target["deployment"]["serial"] == first["serial"]
    assert target["deployment"]["output_tail"] == "reloaded\n"
    assert "web" in cli("cert", "show", "1").stdout  # the text shows the target too
    assert "deployed" in [e["kind"] for e in cli.json("events", "--cert", "1")]

    serve = start_serve(cli)  # its deploy worker takes what every renewal queues
    try:
        cli("cert", "renew", "1")
        renewed = _show(cli)
        assert renewed["serial"] != first["serial"]
        wait_until(
            "the renewal to reach the target",
            lambda: _fingerprint(web / "fullchain.pem") == renewed["fingerprint_sha256"],
            serve=serve,
        )
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    _assert_installed(cli, web, seen)
    previous = web / "fullchain.pem.previous"
    assert _fingerprint(previous) == first["fingerprint_sha256"]  # the old one is kept
    assert _mode(web / "privkey.pem.previous") == 0o600


def test_a_local_target_gets_every_format_with_its_modes_and_owner(
    cli: Cli, tmp_path: Path
) -> None:
    _issued(cli, "formats.example.com")
    web, password = tmp_path / "web", tmp_path / "p12-password"
    web.mkdir()
    password.write_text("p12-secret\n")
    owner = ("--owner", "nobody") if os.geteuid() == 0 else ()
    add = ("target", "add", "web", "--local", str(web), "--combined-file", "combined.pem",
           "--pkcs12-file", "web.p12", "--pkcs12-password-file", str(password), *owner)  # fmt: skip
    for option, bad in (("--key-mode", "999"), ("--cert-mode", "rw-r--r--")):
        refused = cli(*add, option, bad, check=False)
        assert refused.returncode == 2, refused.stderr
        assert f"{option} {bad!r} is not a file mode in octal" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert "no targets" in cli("target", "list").stdout
    cli(*add, "--key-mode", "640", "--cert-mode", "0444")
    assert cli.json("target", "show", "web")["files"]["key_mode"] == "0640"
    cli("target", "attach", "web", "1")
    cli("deploy", "1", "--wait")

    fullchain = web / "fullchain.pem"
    assert _fingerprint(fullchain) == _show(cli)["fingerprint_sha256"]
    leaf = x509.load_pem_x509_certificates(fullchain.read_bytes())[0]
    key = load_private_key((web / "privkey.pem").read_bytes())
    assert key_matches_certificate(key, leaf)
    combined = (web / "combined.pem").read_bytes()
    key_part, _, _ = combined.partition(b"-----BEGIN CERTIFICATE-----")
    assert key_matches_certificate(load_private_key(key_part), leaf)  # the key first
    chain = x509.load_pem_x509_certificates(fullchain.read_bytes())
    assert x509.load_pem_x509_certificates(combined) == chain and len(chain) >= 2
    p12_key, p12_leaf, p12_chain = pkcs12.load_key_and_certificates(
        (web / "web.p12").read_bytes(), b"p12-secret"
    )
    assert p12_leaf == leaf and p12_key is not None and key_matches_certificate(p12_key, leaf)
    assert p12_chain == chain[1:]
    modes = {"fullchain.pem": 0o444, "privkey.pem": 0o640, "combined.pem": 0o640,
             "web.p12": 0o640}  # fmt: skip
    assert {p.name: _mode(p) for p in web.iterdir()} == modes
    if owner:
        nobody = pwd.getpwnam("nobody").pw_uid
        assert {p.name: p.stat().st_uid for p in web.iterdir()} == dict.fromkeys(modes, nobody)


def test_a_failing_reload_rolls_back_raises_an_alarm_and_is_retried_until_it_works(
    cli: Cli, tmp_path: Path
) -> None:
    _issued(cli, "flaky.example.com")
    cli.env["CERTBROKER_DEPLOY_RETRY_FIRST"] = "1"  # seconds, instead of 30
    web, seen, healthy = tmp_path / "web", tmp_path / "seen.pem", tmp_path / "healthy"
    web.mkdir()
    healthy.touch()
    reload = (
        f"test -e {healthy} || {{ echo 'nginx: configuration test failed' >&2; exit 3; }}; "
        f"cp {web}/fullchain.pem {seen}"
    )
    cli("target", "add", "web", "--local", str(web), "--reload", reload)
    cli("target", "attach", "web", "1")
    cli("deploy", "1", "--wait")
    first = _assert_installed(cli, web, seen)

    healthy.unlink()  # the server's configuration breaks
    cli("cert", "renew", "1")
    second = _show(cli)
    out = cli("deploy", "1", "--target", "web", "--wait", check=False)
    assert out.returncode == 1
    assert "NOT deployed" in out.stderr and "exited 3" in out.stderr
    assert "configuration test failed" in out.stderr
    # Rolled back: the server still has the files it can read.
    assert _fingerprint(web / "fullchain.pem") == first["fingerprint_sha256"]
    assert _fingerprint(seen) == first["fingerprint_sha256"]
    alarms = cli("alarms").stdout
    assert "target web" in alarms and "exited 3" in alarms
    deployment = _show(cli)["targets"][0]["deployment"]
    assert deployment["state"] == "failed" and deployment["serial"] == second["serial"]
    assert "deploy-failed" in [e["kind"] for e in cli.json("events", "--cert", "1")]

    healthy.touch()  # a person fixes it; "deploy now" clears the alarm
    cli("deploy", "1", "--target", "web", "--wait")
    _assert_installed(cli, web, seen)
    assert cli("alarms").stdout == "no active alarms\n"
    deployed = [e for e in cli.json("events", "--cert", "1") if e["kind"] == "deployed"]
    assert "alarm cleared" in deployed[-1]["message"]

    # Broken again at the next renewal: `serve` keeps trying by itself until it works.
    healthy.unlink()
    cli("cert", "renew", "1")
    third = _show(cli)
    serve = start_serve(cli)
    try:
        wait_until(
            "a failed attempt",
            lambda: "target web" in cli("alarms").stdout,
            serve=serve,
        )
        assert _fingerprint(web / "fullchain.pem") != third["fingerprint_sha256"]
        healthy.touch()
        wait_until(
            "serve to deploy it by itself",
            lambda: _fingerprint(web / "fullchain.pem") == third["fingerprint_sha256"],
            serve=serve,
        )
    finally:
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    _assert_installed(cli, web, seen)
    assert cli("alarms").stdout == "no active alarms\n"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with run_sshd(tmp_path / "sshd") as server:
        yield server


def test_an_ssh_target_is_deployed_over_sftp_and_reloaded(
    cli: Cli, sshd: Sshd, tmp_path: Path
) -> None:
    _issued(cli, "edge.example.com")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    dest, seen = tmp_path / "edge", tmp_path / "edge-seen.pem"
    dest.mkdir()
    cli(
        "target", "add", "edge", "--ssh", sshd.login, "--known-hosts", str(known_hosts),
        "--identity", str(sshd.identity), "--path", str(dest),
        "--reload", f"cp {dest}/fullchain.pem {seen}",
    )  # fmt: skip
    cli("target", "attach", "edge", "1")
    cli("deploy", "1", "--wait")
    first = _assert_installed(cli, dest, seen)
    assert sorted(p.name for p in dest.iterdir()) == ["fullchain.pem", "privkey.pem"]

    cli("cert", "renew", "1")
    cli("deploy", "1", "--wait")
    _assert_installed(cli, dest, seen)
    assert _fingerprint(dest / "fullchain.pem.previous") == first["fingerprint_sha256"]

    # The identity is sealed in the store, and never shown.
    identity_body = sshd.identity.read_text().splitlines()[1]
    assert identity_body not in cli("target", "show", "edge").stdout
    for db in cli.data_dir.glob("*.db"):
        assert identity_body.encode() not in db.read_bytes()


def test_one_ssh_target_installs_on_every_one_of_its_hosts(
    cli: Cli, sshd: Sshd, tmp_path: Path
) -> None:
    _issued(cli, "twice.example.com")
    dest, reloads = tmp_path / "edge", tmp_path / "reloads"
    dest.mkdir()
    with run_sshd(tmp_path / "sshd2") as second:
        second.let_in(sshd)  # one identity logs in to both
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(sshd.known_hosts_line() + second.known_hosts_line())
        no_known_hosts = cli("target", "add", "edge", "--ssh", sshd.login, "--ssh",
                             second.login, "--identity", str(sshd.identity), "--path",
                             str(dest), check=False)  # fmt: skip
        assert no_known_hosts.returncode == 2
        assert "--known-hosts" in no_known_hosts.stderr
        # Both hosts share this machine's disk: each reload notes the port it came in on
        # and what it found there, and each server's log shows an SFTP session.
        reload = (f"echo \"${{SSH_CONNECTION##* }} $(sha256sum < {dest}/fullchain.pem)\""
                  f" >> {reloads}")  # fmt: skip
        cli("target", "add", "edge", "--ssh", sshd.login, "--ssh", second.login,
            "--known-hosts", str(known_hosts), "--identity", str(sshd.identity),
            "--path", str(dest), "--reload", reload)  # fmt: skip
        assert len(cli.json("target", "show", "edge")["hosts"]) == 2
        cli("target", "attach", "edge", "1")
        cli("deploy", "1", "--wait")
        shown = _show(cli)
        assert _fingerprint(dest / "fullchain.pem") == shown["fingerprint_sha256"]
        digest = hashlib.sha256((dest / "fullchain.pem").read_bytes()).hexdigest()
        lines = sorted(reloads.read_text().split("\n")[:-1])
        assert lines == sorted(f"{port} {digest}  -" for port in (sshd.port, second.port))
        for server in (sshd, second):  # each was logged in to, given the files, reloaded
            log = server.log()
            assert "Starting session: subsystem 'sftp'" in log, log[-2000:]
            assert "Starting session: command" in log, log[-2000:]


def test_an_ssh_host_with_another_key_is_refused_and_nothing_is_written(
    cli: Cli, sshd: Sshd, tmp_path: Path
) -> None:
    import asyncssh

    _issued(cli, "mitm.example.com")
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {stranger}")
    dest = tmp_path / "edge"
    dest.mkdir()
    add = (
        "target", "add", "edge", "--ssh", sshd.login, "--identity", str(sshd.identity),
        "--path", str(dest), "--reload", f"touch {dest}/reloaded",
    )  # fmt: skip

    other_host = tmp_path / "other_known_hosts"
    other_host.write_text(f"[127.0.0.1]:{sshd.port + 1} {stranger}")
    refused = cli(*add, "--known-hosts", str(other_host), check=False)
    assert refused.returncode == 2
    assert f"--known-hosts holds no key for [127.0.0.1]:{sshd.port}" in refused.stderr
    assert "no targets" in cli("target", "list").stdout  # nothing stored

    cli(*add, "--known-hosts", str(wrong))
    cli("target", "attach", "edge", "1")
    out = cli("deploy", "1", "--wait", check=False)
    assert out.returncode == 1
    assert f"127.0.0.1:{sshd.port}" in out.stderr
    assert "not the one in the target's known_hosts" in out.stderr
    assert "--known-hosts" in out.stderr
    assert list(dest.iterdir()) == []  # nothing written, nothing reloaded
    assert "target edge" in cli("alarms").stdout


def test_the_consoles_deploy_now_button_installs_it_again(
    cli: Cli, tmp_path: Path, browser: Browser
) -> None:
    """Someone overwrote the server's certificate: a done deployment never runs again by
    itself, and the console's button puts the right files back."""
    _issued(cli, "button.example.com")
    web, seen = tmp_path / "web", tmp_path / "seen.pem"
    web.mkdir()
    cli("target", "add", "web", "--local", str(web), "--reload", f"cp {web}/fullchain.pem {seen}")
    cli("target", "attach", "web", "1")
    cli("deploy", "1", "--wait")
    (web / "fullchain.pem").write_text("clobbered by hand\n")

    serve = start_api(cli, CERTBROKER_ADMIN_PASSWORD="admin-password-1")
    page = new_page(browser, api_url(cli))
    try:
        log_in(page, "admin", "admin-password-1", "/certificates/1")
        expect(page.locator("#targets")).to_contain_text("web")
        expect(page.locator("#targets")).to_contain_text("done")
        page.click("#deploy")
        expect(page.locator(".flash")).to_contain_text("Deployment queued for web")
        wait_until(
            "the button's deployment",
            lambda: (web / "fullchain.pem").read_text() != "clobbered by hand\n",
            serve=serve,
        )
    finally:
        page.context.close()
        log = stop_serve(serve)
    assert serve.returncode == 0, log
    _assert_installed(cli, web, seen)


def test_bad_target_input_is_refused_in_one_line_and_nothing_is_stored(
    offline_cli: Cli, tmp_path: Path
) -> None:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    plain, locked = tmp_path / "id", tmp_path / "id_locked"
    key.write_private_key(str(plain))
    subprocess.run(  # as people make them: OpenSSH's format, a passphrase
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)], check=True
    )
    known = tmp_path / "known_hosts"
    known.write_text(f"web1.example.com {key.export_public_key().decode()}")
    ssh = ("--ssh", "deploy@web1.example.com", "--path", "/etc/tls")
    cases = [
        ((), "give either --ssh"),
        (("--ssh", "web1.example.com", "--path", "/x"), "--ssh 'web1.example.com' is not"),
        ((*ssh, "--known-hosts", str(known)), "needs --known-hosts FILE"),
        ((*ssh, "--known-hosts", str(known), "--identity", str(tmp_path / "nope")), "no such"),
        ((*ssh, "--known-hosts", str(known), "--identity", str(locked)), "passphrase"),
        (
            (*ssh, "--known-hosts", str(known), "--identity", str(plain), "--verify", "x"),
            "host:port",
        ),
        (("--local", str(tmp_path / "missing")), "no such directory"),
        (("--local", str(tmp_path), "--key-file", "../x"), "--key-file '../x' is not a file"),
    ]
    for args, message in cases:
        out = offline_cli("target", "add", "web", *args, check=False)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1
    assert "no targets" in offline_cli("target", "list").stdout
    offline_cli("target", "add", "web", *ssh, "--known-hosts", str(known), "--identity", str(plain))
    shown = offline_cli("target", "show", "web").stdout
    assert "deploy@web1.example.com" in shown and key.export_private_key().decode() not in shown


def test_targets_over_the_api_admins_add_operators_deploy(cli: Cli, tmp_path: Path) -> None:
    import httpx

    _issued(cli, "api-push.example.com")
    tokens = {
        role: last(cli("token", "create", "--name", role, "--role", role).stdout)
        for role in ("admin", "operator", "viewer")
    }
    limited = ("--role", "operator", "--names", "*.other.example.com")
    tokens["other-team"] = last(cli("token", "create", "--name", "other-team", *limited).stdout)
    web = tmp_path / "web"
    web.mkdir()
    serve = start_api(cli)
    try:

        def as_(role: str) -> httpx.Client:
            return httpx.Client(base_url=api_url(cli), trust_env=False, timeout=60,
                                headers={"Authorization": f"Bearer {tokens[role]}"})  # fmt: skip

        body = {"name": "web", "local": str(web), "reload": "echo reloaded", "key_mode": "640"}
        with as_("operator") as operator, as_("admin") as admin, as_("viewer") as viewer:
            assert operator.post("/api/v1/targets", json=body).status_code == 403
            bad = admin.post("/api/v1/targets", json={"name": "x", "ssh": ["root@h"]})
            assert bad.status_code == 422 and "--path" in bad.json()["detail"]
            bad_mode = admin.post("/api/v1/targets", json={**body, "key_mode": "9"})
            assert bad_mode.status_code == 422
            assert "'9' is not a file mode in octal" in bad_mode.json()["detail"]
            made = admin.post("/api/v1/targets", json=body)
            assert made.status_code == 201, made.text
            # A target's hosts, paths and reload command are configuration: operators and
            # admins see them; a name-limited operator only targets of its certificates.
            assert [t["name"] for t in operator.get("/api/v1/targets").json()] == ["web"]
            assert viewer.get("/api/v1/targets").status_code == 403
            assert viewer.get("/api/v1/targets/web").status_code == 403
            with as_("other-team") as other:
                assert other.get("/api/v1/targets").json() == []
                assert other.get("/api/v1/targets/web").status_code == 404
            assert viewer.post("/api/v1/certificates/1/deploy", json={}).status_code == 403
            attached = operator.post("/api/v1/targets/web/attach", json={"certificate_id": 1})
            assert attached.status_code == 200 and attached.json()["queued"] is True
            # Done, not only its first file there: "deploy now" on a deployment still
            # running queues nothing (it is under way).
            wait_until("the deployment", lambda: _deployment_state(viewer) == "done", serve=serve)
            (web / "fullchain.pem").write_text("overwritten by hand\n")
            again = operator.post("/api/v1/certificates/1/deploy", json={"target": "web"})
            assert again.status_code == 202 and again.json()["queued"] == 1
            wait_until("deployed again", lambda: (web / "fullchain.pem").read_text()
                       .startswith("-----BEGIN CERTIFICATE"), serve=serve)  # fmt: skip
            (shown,) = viewer.get("/api/v1/certificates/1/targets").json()
            assert shown["target"] == "web"
            assert _mode(web / "privkey.pem") == 0o640 and _mode(web / "fullchain.pem") == 0o644

            # A target that keeps failing: its alarm is in the API's list and counted.
            broken = tmp_path / "broken"
            broken.mkdir()
            added = admin.post("/api/v1/targets", json={"name": "broken", "local": str(broken),
                               "reload": "echo 'no such service' >&2; exit 3"})  # fmt: skip
            assert added.status_code == 201, added.text
            assert viewer.get("/api/v1/alarms").json() == []
            operator.post("/api/v1/targets/broken/attach", json={"certificate_id": 1})

            def alarms() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = viewer.get("/api/v1/alarms").json()
                return found

            wait_until("the deployment's alarm", alarms, serve=serve)
            (alarm,) = alarms()
            assert alarm["kind"] == "deployment" and alarm["target"] == "broken"
            assert alarm["certificate_id"] == 1 and alarm["names"] == ["api-push.example.com"]
            assert "exited 3" in alarm["last_error"]
            assert viewer.get("/api/v1/dashboard").json()["alarms"] == 1
            assert admin.delete("/api/v1/targets/broken").status_code == 200
            assert viewer.get("/api/v1/alarms").json() == []  # its alarm goes with it
            assert admin.delete("/api/v1/targets/web").status_code == 200
            assert operator.get("/api/v1/targets").json() == []
    finally:
        stop_serve(serve)


def _deployment_state(client: Any) -> str | None:
    (shown,) = client.get("/api/v1/certificates/1/targets").json()
    return None if shown["deployment"] is None else str(shown["deployment"]["state"])


def last(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_verify_checks_that_the_server_now_serves_the_new_certificate(
    cli: Cli, tmp_path: Path
) -> None:
    from tests.support.nginx import http_preamble, nginx_binary, run_nginx, user_directive
    from tests.support.ports import free_port

    _issued(cli, "tls.example.com")
    web = tmp_path / "web"
    web.mkdir()
    cli("target", "add", "files", "--local", str(web))  # nginx needs files to start with
    cli("target", "attach", "files", "1")
    cli("deploy", "1", "--wait")
    cli("target", "detach", "files", "1")
    work, port = tmp_path / "nginx", free_port()
    conf = f"""{user_directive()}
worker_processes 1;
events {{ worker_connections 64; }}
http {{
{http_preamble(work)}
    access_log off;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {web}/fullchain.pem;
        ssl_certificate_key {web}/privkey.pem;
        location / {{ return 200 "ok"; }}
    }}
}}
"""
    with run_nginx(nginx_binary("--verify"), work, port, conf) as nginx:
        verify = ["--verify", f"127.0.0.1:{port}"]
        # A reload that makes nginx read the new files: verified.
        cli("target", "add", "served", "--local", str(web), "--reload",
            f"kill -HUP {nginx.pid}", *verify)  # fmt: skip
        cli("target", "attach", "served", "1")
        cli("cert", "renew", "1")
        out = cli("deploy", "1", "--target", "served", "--wait")
        assert f"127.0.0.1:{port} serves it" in out.stdout + out.stderr
        cli("target", "detach", "served", "1")

        # A reload that does nothing: the files are new, but nginx serves the old one.
        cli("target", "add", "stale", "--local", str(web), "--reload", "true", *verify)
        cli("target", "attach", "stale", "1")
        cli("cert", "renew", "1")
        out = cli("deploy", "1", "--target", "stale", "--wait", check=False)
        assert out.returncode == 1
        assert "still serves another certificate" in out.stderr
        assert _fingerprint(web / "fullchain.pem") == _show(cli)["fingerprint_sha256"]
        assert "target stale" in cli("alarms").stdout
