"""A real SMTP server for the mail tests: aiosmtpd in a process of its own, on a free
loopback port, offering STARTTLS with a test certificate (and requiring it before AUTH
and mail), checking one user's password, and writing each mail it accepts to a
directory with how it arrived (TLS or not, who logged in). Stopped by PID.

Run by the tests as `python -m tests.support.smtp DIR PORT CERT KEY USER PASSWORD`.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.pebble import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SmtpServer:
    """The running server: its port, the CA file its certificate chains to, the log-in it
    accepts, and the mails it received."""

    port: int
    ca_file: Path
    user: str
    password: str
    spool: Path
    process: subprocess.Popen[bytes]

    def env(self, **extra: str) -> dict[str, str]:
        """certbroker's settings for this server (STARTTLS, the log-in, the test CA)."""
        return {
            "CERTBROKER_SMTP_HOST": "127.0.0.1",
            "CERTBROKER_SMTP_PORT": str(self.port),
            "CERTBROKER_SMTP_SECURITY": "starttls",
            "CERTBROKER_SMTP_USER": self.user,
            "CERTBROKER_SMTP_PASSWORD": self.password,
            "CERTBROKER_SMTP_FROM": "certbroker@example.com",
            "CERTBROKER_SMTP_CA_FILE": str(self.ca_file),
            **extra,
        }

    def mails(self) -> list[tuple[dict[str, Any], EmailMessage]]:
        """(how it arrived, the message) for every mail received, oldest first."""
        found = []
        for meta_path in sorted(self.spool.glob("*.json")):
            meta = json.loads(meta_path.read_text())
            raw = meta_path.with_suffix(".eml").read_bytes()
            message = email.message_from_bytes(raw, policy=email.policy.default)
            found.append((meta, message))  # type: ignore[arg-type]
        return found

    def clear(self) -> None:
        for path in self.spool.iterdir():
            path.unlink()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True,
    crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


def _test_pki(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 and localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certbroker test mail CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (workdir / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def start_smtp(
    workdir: Path,
    user: str = "mailer",
    password: str = "s3cret-pw",  # noqa: S107 - the test server's own log-in
) -> SmtpServer:
    """Start the server and wait until it greets."""
    workdir.mkdir(parents=True, exist_ok=True)
    spool = workdir / "spool"
    spool.mkdir(exist_ok=True)
    ca_file, cert_file, key_file = _test_pki(workdir)
    port = free_port()
    log = (workdir / "smtp.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.smtp", str(spool), str(port),
         str(cert_file), str(key_file), user, password],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = SmtpServer(port, ca_file, user, password, spool, process)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(100).startswith(b"220"):
                    return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"the test SMTP server did not start: {(workdir / 'smtp.log').read_text()}"
            )
        time.sleep(0.1)


def _serve(spool: Path, port: int, cert: str, key: str, user: str, password: str) -> None:
    import ssl
    import threading

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    counter = iter(range(1, 1_000_000))

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (
            data.login.decode(),
            data.password.decode(),
        ) == (user, password)
        return AuthResult(success=ok, handled=False)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            n = next(counter)
            name = f"{time.time_ns()}-{n:06d}"
            (spool / f"{name}.eml").write_bytes(envelope.original_content or envelope.content)
            meta = {
                "tls": session.ssl is not None,
                "login": (session.login_data or b"").decode()
                if isinstance(session.login_data, bytes)
                else str(session.login_data or ""),
                "authenticated": bool(session.authenticated),
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
            }
            tmp = spool / f"{name}.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.rename(spool / f"{name}.json")
            return f"250 2.0.0 Ok: queued as T{n:06d}"

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
        ready_timeout=20,
    )
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    a = sys.argv[1:]
    _serve(Path(a[0]), int(a[1]), a[2], a[3], a[4], a[5])
