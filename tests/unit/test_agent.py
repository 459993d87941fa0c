"""The gateway agent's own rules, without a broker: its configuration answered line by
line, a delivery older than what is installed refused (a replay or a stale broker), a
renewed certificate held until `install_days_before_expiry` and installed when its time
comes, a restart that finds it installed already says so instead of installing again,
the edge answering only its tokens, and the help showing `[[certificate]]`.
(tests/integration/test_agent.py runs agents against a broker and Pebble.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certbroker.agent.config import load_config
from certbroker.agent.runner import Agent
from certbroker.agent.state import AgentState
from certbroker.domain.errors import UsageError

TOKEN = "cbc_" + "x" * 40


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


GOOD = f"""
broker = "https://broker.example.com"
token = "{TOKEN}"
http01_listen = "127.0.0.1:8080"

[[certificate]]
names = ["gw1.example.com"]
cert_path = "tls/fullchain.pem"
key_path = "tls/privkey.pem"
install_days_before_expiry = 30
"""


def test_a_good_configuration_is_read_with_its_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.websocket_url == "wss://broker.example.com/api/v1/agent/ws"
    (cert,) = config.certificates
    assert cert.key_path == tmp_path / "tls/privkey.pem"  # relative to the file
    assert cert.mode == 0o600 and cert.key.value == "local"
    assert config.state_file == tmp_path / "agent-state.json"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("broker = 'x'", "`broker` must be a URL"),
        (GOOD.replace(f'token = "{TOKEN}"', 'token = "cbt_api"'), "client token"),
        (GOOD.replace(f'token = "{TOKEN}"', ""), "give `token` or `token_file`"),
        (GOOD.replace('"127.0.0.1:8080"', '"nowhere"'), "http01_listen 'nowhere'"),
        (GOOD.replace("install_days", "instal_days"), "unknown key(s) instal_days"),
        (GOOD.replace('key_path = "tls/privkey.pem"', ""), "`cert_path` and `key_path`"),
        (GOOD + 'key = "device"\n', "key 'device': choose local or broker"),
        (GOOD.split("[[certificate]]")[0], "no [[certificate]] table"),
        ("broker = ", "not valid TOML"),
    ],
)
def test_a_bad_configuration_is_one_clear_line(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(UsageError) as refused:
        load_config(write(tmp_path, text))
    assert words in str(refused.value)


class Recording(Agent):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sent: list[dict[str, Any]] = []

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def _agent(tmp_path: Path) -> Recording:
    return Recording(load_config(write(tmp_path, GOOD)))


def _delivery(
    serial: str,
    not_before: datetime,
    *,
    pem_not_before: datetime | None = None,
    pem_name: str = "gw1.example.com",
) -> dict[str, Any]:
    """A delivery as the broker sends it; its PEM says what the certificate is (which
    `pem_not_before` and `pem_name` make other than the message says)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = _self_signed(key, pem_name, pem_not_before or not_before, int(serial, 16))
    return {
        "type": "certificate",
        "certificate_id": 7,
        "names": ["gw1.example.com"],
        "serial": serial,
        "not_before": not_before.isoformat(),
        "not_after": (not_before + timedelta(days=90)).isoformat(),
        "chain": pem,
        "key_mode": "local",
    }


def _installed(agent: Agent, not_before: datetime, serial: str = "b") -> None:
    held = agent.state.of("gw1.example.com")
    held.certificate_id, held.serial = 7, serial
    held.not_before = not_before.isoformat()
    held.not_after = (not_before + timedelta(days=90)).isoformat()
    agent.state.save()


def test_an_older_certificate_than_the_installed_one_is_refused(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    now = datetime.now(UTC)
    _installed(agent, now - timedelta(days=1))
    run(agent._on(_delivery("a", now - timedelta(days=30))))
    (report,) = agent.sent
    assert report["ok"] is False and "older than the installed b" in report["error"]
    assert AgentState.load(agent.config.state_file).of("gw1.example.com").serial == "b"
    assert not (tmp_path / "tls").exists()  # nothing written


def test_the_certificates_own_dates_and_names_decide_not_the_message(tmp_path: Path) -> None:
    """Issue 24, finding 7: the replay check read the message's not_before; a broker (or
    a man in the middle) could send an old certificate under a new date, or another
    name's certificate under this entry's names."""
    agent = _agent(tmp_path)
    now = datetime.now(UTC)
    _installed(agent, now - timedelta(days=1))
    run(agent._on(_delivery("a", now, pem_not_before=now - timedelta(days=30))))
    run(agent._on(_delivery("c", now, pem_name="evil.example.com")))
    older, other = agent.sent
    assert older["ok"] is False and "older than the installed b" in older["error"]
    assert other["ok"] is False and "evil.example.com" in other["error"]
    assert "gw1.example.com" in other["error"]
    assert AgentState.load(agent.config.state_file).of("gw1.example.com").serial == "b"
    assert not (tmp_path / "tls").exists()  # nothing written


def test_without_its_state_file_the_installed_file_says_what_is_older(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    agent = _agent(tmp_path)  # no state: a new gateway, or the state file was lost
    now = datetime.now(UTC)
    (tmp_path / "tls").mkdir()
    installed = _self_signed(ec.generate_private_key(ec.SECP256R1()), "gw1.example.com",
                             now - timedelta(days=1), 0x0B)  # fmt: skip
    (tmp_path / "tls/fullchain.pem").write_text(installed)
    run(agent._on(_delivery("a", now - timedelta(days=30))))
    (report,) = agent.sent
    assert report["ok"] is False and "older than the installed b" in report["error"]
    assert (tmp_path / "tls/fullchain.pem").read_text() == installed


def test_a_plain_http_broker_is_refused_unless_the_configuration_says_so(
    tmp_path: Path,
) -> None:
    plain = GOOD.replace("https://broker.example.com", "http://broker.example.com")
    with pytest.raises(UsageError, match="insecure_http = true"):
        load_config(write(tmp_path, plain))
    config = load_config(write(tmp_path, "insecure_http = true\n" + plain))
    assert config.websocket_url.startswith("ws://") and config.insecure_http
    local = GOOD.replace("https://broker.example.com", "http://127.0.0.1:8080")
    assert load_config(write(tmp_path, local)).broker == "http://127.0.0.1:8080"


def test_a_renewed_certificate_waits_until_its_install_time(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    now = datetime.now(UTC)
    _installed(agent, now - timedelta(days=1))  # 89 days left, more than 30
    run(agent._on(_delivery("c", now)))
    assert agent.sent == []  # nothing to report yet
    held = json.loads(agent.config.state_file.read_text())["certificates"]["gw1.example.com"]
    assert held["waiting"]["serial"] == "c" and held["serial"] == "b"  # kept for later
    assert stat_mode(agent.config.state_file) == 0o600


def test_what_is_installed_already_is_reported_not_installed_again(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    now = datetime.now(UTC)
    _installed(agent, now, serial="d")
    run(agent._on(_delivery("d", now)))
    (report,) = agent.sent
    assert report["ok"] is True and report["serial"] == "d"
    assert not (tmp_path / "tls").exists()


def run(step: Coroutine[Any, Any, None]) -> None:
    """On a loop of its own, in a thread: a browser test earlier in this worker process
    may have left one running in the main thread (Playwright's sync API)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, step).result()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _self_signed(key: Any, name: str, not_before: datetime, serial: int = 0x0E) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_failed_install_is_tried_again_later_from_the_state_file(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from certbroker.crypto.keys import private_key_to_pem

    flag = tmp_path / "broken"
    flag.touch()
    text = GOOD.replace("install_days_before_expiry = 30", f'reload = "test ! -e {flag}"')
    agent = Recording(load_config(write(tmp_path, text)))
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls/privkey.pem.next").write_bytes(private_key_to_pem(key))  # its CSR's key
    now = datetime.now(UTC)
    message = _delivery("e", now) | {"chain": _self_signed(key, "gw1.example.com", now)}

    run(agent._on(message))  # the reload fails: the files are put back
    (report,) = agent.sent
    assert report["ok"] is False and "reload command exited 1" in report["error"]
    assert not (tmp_path / "tls/fullchain.pem").exists()
    held = AgentState.load(agent.config.state_file).of("gw1.example.com")
    assert held.waiting is not None and held.failures == 1 and held.serial is None

    flag.unlink()  # a person fixes the server
    run(agent.install_waiting(now))  # not yet: the retry is a minute away
    assert not (tmp_path / "tls/fullchain.pem").exists()
    restarted = Recording(load_config(write(tmp_path, text)))  # the agent restarted, too
    run(restarted.install_waiting(now + timedelta(minutes=2)))
    assert (tmp_path / "tls/fullchain.pem").read_text() == message["chain"]
    assert restarted.sent[-1]["ok"] is True and restarted.sent[-1]["serial"] == "e"
    held = AgentState.load(agent.config.state_file).of("gw1.example.com")
    assert held.serial == "e" and held.waiting is None and held.failures == 0
    assert not (tmp_path / "tls/privkey.pem.next").exists()  # the new key is in place


def test_a_token_others_may_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "agent.token"
    token.write_text(TOKEN + "\n")
    text = GOOD.replace(f'token = "{TOKEN}"', 'token_file = "agent.token"')
    token.chmod(0o644)
    with caplog.at_level("WARNING", logger="certbroker.agent"):
        load_config(write(tmp_path, text))
    assert "agent.token holds the client's token and others may read it" in caplog.text
    caplog.clear()
    token.chmod(0o600)
    (tmp_path / "agent.toml").chmod(0o600)
    with caplog.at_level("WARNING", logger="certbroker.agent"):
        assert load_config(write(tmp_path, text)).token == TOKEN
    assert caplog.text == ""


def test_a_held_certificate_is_installed_once_its_time_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from certbroker.agent import runner
    from certbroker.crypto.keys import private_key_to_pem

    agent = _agent(tmp_path)  # install_days_before_expiry = 30
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls/privkey.pem.next").write_bytes(private_key_to_pem(key))  # its CSR's key
    now = datetime.now(UTC)
    _installed(agent, now - timedelta(days=1))  # 89 days left
    message = _delivery("f", now) | {"chain": _self_signed(key, "gw1.example.com", now, 0x0F)}
    run(agent._on(message))
    run(agent.install_waiting(now))  # its time has not come: still held
    assert agent.sent == [] and not (tmp_path / "tls/fullchain.pem").exists()

    later = now + timedelta(days=60)  # the installed one has 29 days left

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Later:
            return cls.fromtimestamp(later.timestamp(), tz)

    monkeypatch.setattr(runner, "datetime", Later)
    restarted = Recording(load_config(write(tmp_path, GOOD)))  # from the state file
    run(restarted.install_waiting(later))
    assert (tmp_path / "tls/fullchain.pem").read_text() == message["chain"]
    assert stat_mode(tmp_path / "tls/privkey.pem") == 0o600
    (report,) = restarted.sent
    assert report["ok"] is True and report["serial"] == "f"
    held = AgentState.load(agent.config.state_file).of("gw1.example.com")
    assert held.serial == "f" and held.waiting is None


def test_the_edge_answers_only_the_tokens_it_was_given(tmp_path: Path) -> None:
    from certbroker.agent.edge import EdgeResponder
    from tests.support.ports import free_port

    async def ask(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer

    answers: dict[str, bytes] = {}

    async def scenario() -> None:
        edge = EdgeResponder("127.0.0.1", free_port())
        edge.tokens = {"tok-1": "tok-1.thumbprint"}
        await edge.start()
        try:
            for label, path in (
                ("known", "/.well-known/acme-challenge/tok-1"),
                ("unknown", "/.well-known/acme-challenge/tok-2"),
                ("outside", "/tok-1"),
                ("elsewhere", "/.well-known/other/tok-1"),
                ("prefix only", "/.well-known/acme-challenge/"),
            ):
                request = f"GET {path} HTTP/1.1\r\nHost: gw1.example.com\r\n\r\n".encode()
                answers[label] = await ask(edge.port, request)
        finally:
            await edge.stop()

    run(scenario())
    assert answers["known"].startswith(b"HTTP/1.1 200 ")
    assert answers["known"].endswith(b"\r\n\r\ntok-1.thumbprint")
    for label in ("unknown", "outside", "elsewhere", "prefix only"):
        assert answers[label].startswith(b"HTTP/1.1 404 "), (label, answers[label])
        assert b"tok-1.thumbprint" not in answers[label]


def _help(tmp_path: Path, command: str) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    env |= {"CERTBROKER_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    shown = subprocess.run(
        [sys.executable, "-m", "certbroker", command, "--help"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return " ".join(shown.stdout.replace("│", " ").split())


def test_the_agents_help_shows_its_certificate_tables(tmp_path: Path) -> None:
    assert "http01_listen, [[certificate]] tables" in _help(tmp_path, "agent")
    alarms = _help(tmp_path, "alarms")  # the agents' alarms are among them
    assert "push targets" in alarms and "gateway agents" in alarms and "drift" in alarms
