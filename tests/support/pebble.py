"""Run the real Pebble ACME test server (Debian package ``pebble``) for integration tests.

``start_pebble()`` writes a throwaway TLS PKI and a Pebble config into a work
directory, starts ``pebble`` (and, unless told otherwise, ``pebble-challtestsrv``
as its DNS server) and waits until the ACME directory answers over verified HTTPS.

Facts about Pebble 2.4 (Debian 2.4.0) this harness relies on:

* Config keys (JSON under ``"pebble"``, matched case-insensitively): listenAddress,
  managementListenAddress, certificate, privateKey, httpPort, tlsPort,
  ocspResponderURL, externalAccountBindingRequired, externalAccountMACKeys,
  domainBlocklist, certificateValidityPeriod.  There is no ``retryAfter`` setting in
  2.4 (it arrived later) and 2.4 never sends ``Retry-After``.
* Both the ACME listener and the management listener serve HTTPS with the
  configured certificate.
* ``GET /cert-status-by-serial/<hex>`` parses ``<hex>`` as base 16 and answers 404
  for unknown serials, else JSON ``{"Status": "Valid"|"Revoked", "Serial": <lowercase
  hex, no leading zeros>, "Certificate": <PEM>}`` plus ``"Reason"`` (int, only when
  a reason was given) and ``"RevokedAt"`` (Go time string) once revoked.
* Pebble keeps everything in memory: a restart forgets accounts, orders and
  certificates, and generates a new issuing root and intermediate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .ports import free_port, free_udp_tcp_port, wait_for_tcp
from .processes import LOG_TAIL_LINES, log_tail, require_binary, spawn, terminate

__all__ = ["PebbleServer", "PebbleStartupError", "serial_hex", "start_pebble"]

PEBBLE_BINARY = "pebble"
CHALLTESTSRV_BINARY = "pebble-challtestsrv"
STARTUP_TIMEOUT = 20.0
_PORT_ATTEMPTS = 3


class PebbleStartupError(RuntimeError):
    """Pebble (or pebble-challtestsrv) did not come up; the message holds the log tail."""


def serial_hex(serial: int) -> str:
    """Format a certificate serial the way Pebble does (Go ``big.Int.Text(16)``)."""
    return format(serial, "x")


def _write_listener_pki(workdir: Path) -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a localhost/127.0.0.1 server cert signed by it.

    Returns (ca_bundle, cert, key) paths.
    """
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certbroker tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, "certbroker test Pebble listener CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_bundle = workdir / "listener-ca.pem"
    cert_path = workdir / "listener-cert.pem"
    key_path = workdir / "listener-key.pem"
    ca_bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_bundle, cert_path, key_path


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through an *_PROXY from the environment
    return session


@dataclass
class PebbleServer:
    """A running Pebble instance (see ``start_pebble``)."""

    directory_url: str
    management_url: str
    ca_bundle: Path
    http_port: int
    dns_port: int | None
    workdir: Path
    tls_port: int = 0
    #: pebble-challtestsrv's management API (http://127.0.0.1:<port>) when the harness
    #: started it, e.g. for POST /set-txt, /add-a, /set-default-ipv4.
    challtestsrv_url: str | None = None
    _pebble_argv: list[str] = field(default_factory=list, repr=False)
    _pebble_env: dict[str, str] = field(default_factory=dict, repr=False)
    _pebble: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _challtestsrv: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    # -- logs ---------------------------------------------------------------------
    @property
    def pebble_log(self) -> Path:
        return self.workdir / "pebble.log"

    @property
    def challtestsrv_log(self) -> Path:
        return self.workdir / "challtestsrv.log"

    @property
    def pid(self) -> int | None:
        return None if self._pebble is None else self._pebble.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.pebble_log, lines)

    # -- management API -----------------------------------------------------------
    def _management_get(self, path: str) -> requests.Response:
        with _session() as session:
            return session.get(
                f"{self.management_url}{path}", verify=str(self.ca_bundle), timeout=10
            )

    def roots_pem(self) -> bytes:
        """Pebble's issuing root (regenerated on every start)."""
        resp = self._management_get("/roots/0")
        resp.raise_for_status()
        return resp.content

    def intermediates_pem(self) -> bytes:
        """Pebble's issuing intermediate (regenerated on every start)."""
        resp = self._management_get("/intermediates/0")
        resp.raise_for_status()
        return resp.content

    def cert_status(self, serial: int) -> dict[str, Any]:
        """Pebble's view of a certificate, e.g. ``{"Status": "Revoked", "Reason": 4, ...}``.

        Keys: Status ("Valid" or "Revoked"), Serial (lowercase hex), Certificate (PEM),
        and once revoked RevokedAt plus Reason (only if the client sent one).
        Raises ``LookupError`` if Pebble does not know the serial.
        """
        hex_serial = serial_hex(serial)
        resp = self._management_get(f"/cert-status-by-serial/{hex_serial}")
        if resp.status_code == 404:
            raise LookupError(f"Pebble knows no certificate with serial {hex_serial}")
        resp.raise_for_status()
        status: dict[str, Any] = resp.json()
        return status

    # -- lifecycle ------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._pebble is not None and self._pebble.poll() is None

    def stop(self) -> None:
        """Stop Pebble and the harness's pebble-challtestsrv (idempotent)."""
        try:
            terminate(self._pebble)
        finally:
            terminate(self._challtestsrv)

    def restart(self) -> None:
        """Restart Pebble on the same ports. Pebble forgets ALL state (accounts, orders,
        certificates) and generates a new issuing root and intermediate."""
        terminate(self._pebble)
        self._pebble = spawn(self._pebble_argv, self.pebble_log, self._pebble_env)
        try:
            self._wait_ready(STARTUP_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Wait until the directory and the management API answer 200 over verified HTTPS."""
        deadline = time.monotonic() + timeout
        last = "no attempt yet"
        with _session() as session:
            while time.monotonic() < deadline:
                for name, proc, log in (
                    ("pebble", self._pebble, self.pebble_log),
                    ("pebble-challtestsrv", self._challtestsrv, self.challtestsrv_log),
                ):
                    if proc is not None and proc.poll() is not None:
                        raise PebbleStartupError(
                            f"{name} exited with status {proc.returncode} during startup; "
                            f"last lines of {log}:\n{log_tail(log)}"
                        )
                try:
                    resp = session.get(self.directory_url, verify=str(self.ca_bundle), timeout=2)
                    if resp.status_code == 200:
                        resp = session.get(
                            f"{self.management_url}/roots/0",
                            verify=str(self.ca_bundle),
                            timeout=2,
                        )
                        if resp.status_code == 200:
                            return
                    last = f"HTTP {resp.status_code} from {resp.url}"
                except requests.RequestException as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        raise PebbleStartupError(
            f"Pebble did not answer {self.directory_url} within {timeout:g}s ({last}); "
            f"last lines of {self.pebble_log}:\n{self.log_tail()}"
        )

    def __enter__(self) -> PebbleServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _start_challtestsrv(
    workdir: Path, env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], int, str]:
    binary = require_binary(CHALLTESTSRV_BINARY, "pebble", "integration")
    log_path = workdir / "challtestsrv.log"
    last_error = ""
    for _ in range(_PORT_ATTEMPTS):
        dns_port = free_udp_tcp_port()
        mgmt_port = free_port()
        argv = [
            binary,
            "-dns01",
            f"127.0.0.1:{dns_port}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            f"127.0.0.1:{mgmt_port}",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]
        proc = spawn(argv, log_path, env)
        try:
            # The DNS server listens on UDP and TCP; TCP tells us it is up.
            wait_for_tcp("127.0.0.1", dns_port, timeout=10)
            wait_for_tcp("127.0.0.1", mgmt_port, timeout=10)
        except TimeoutError as exc:
            last_error = str(exc)
            terminate(proc)
            continue
        if proc.poll() is None:
            return proc, dns_port, f"http://127.0.0.1:{mgmt_port}"
        last_error = f"exited with status {proc.returncode}"
    raise PebbleStartupError(
        f"pebble-challtestsrv did not start ({last_error}); last lines of {log_path}:\n"
        f"{log_tail(log_path)}"
    )


def start_pebble(
    workdir: Path,
    *,
    http_port: int,
    always_valid: bool = False,
    nonce_reject: int | None = None,
    eab_keys: dict[str, str] | None = None,
    eab_required: bool = False,
    dns_server: str | None = None,
    env: dict[str, str] | None = None,
    validity_seconds: int | None = None,
) -> PebbleServer:
    """Start Pebble and wait until its directory answers.

    :param workdir: where certificates, config and logs go (created if missing).
    :param http_port: port Pebble's VA connects to for HTTP-01 (on the address the
        identifier resolves to: 127.0.0.1 with the harness's DNS server).
    :param always_valid: set PEBBLE_VA_ALWAYS_VALID=1 (no real challenge validation).
    :param nonce_reject: PEBBLE_WFE_NONCEREJECT percentage; None keeps Pebble's
        default (5 % of good nonces rejected as badNonce).
    :param eab_keys: kid -> base64url (unpadded) HMAC key for externalAccountMACKeys.
    :param eab_required: externalAccountBindingRequired.
    :param dns_server: "host:port" for Pebble's -dnsserver; None starts
        pebble-challtestsrv answering A=127.0.0.1 (no AAAA) and uses that.
    :param env: extra environment for Pebble, applied last (overrides the above).
    :param validity_seconds: certificateValidityPeriod (Pebble's default: about 5 years);
        short lifetimes let renewal tests see certificates fall due.
    """
    pebble_binary = require_binary(PEBBLE_BINARY, "pebble", "integration")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca_bundle, cert_path, key_path = _write_listener_pki(workdir)

    # Inherit PATH etc., but never stray PEBBLE_* settings from the caller's environment.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    pebble_env = dict(base_env)
    pebble_env["PEBBLE_VA_NOSLEEP"] = "1"
    if always_valid:
        pebble_env["PEBBLE_VA_ALWAYS_VALID"] = "1"
    if nonce_reject is not None:
        pebble_env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
    if env:
        pebble_env.update(env)

    challtestsrv: subprocess.Popen[bytes] | None = None
    challtestsrv_url: str | None = None
    dns_port: int | None = None
    if dns_server is None:
        challtestsrv, dns_port, challtestsrv_url = _start_challtestsrv(workdir, base_env)
        dns_server = f"127.0.0.1:{dns_port}"

    try:
        last_error: PebbleStartupError | None = None
        for _ in range(_PORT_ATTEMPTS):
            acme_port, mgmt_port, tls_port = free_port(), free_port(), free_port()
            config = {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{acme_port}",
                    "managementListenAddress": f"127.0.0.1:{mgmt_port}",
                    "certificate": str(cert_path),
                    "privateKey": str(key_path),
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": eab_required,
                    "externalAccountMACKeys": dict(eab_keys or {}),
                }
            }
            if validity_seconds is not None:
                config["pebble"]["certificateValidityPeriod"] = validity_seconds
            config_path = workdir / "pebble-config.json"
            config_path.write_text(json.dumps(config, indent=2) + "\n")
            argv = [
                pebble_binary,
                "-config",
                str(config_path),
                "-strict=false",
                "-dnsserver",
                dns_server,
            ]
            server = PebbleServer(
                directory_url=f"https://127.0.0.1:{acme_port}/dir",
                management_url=f"https://127.0.0.1:{mgmt_port}",
                ca_bundle=ca_bundle,
                http_port=http_port,
                dns_port=dns_port,
                workdir=workdir,
                tls_port=tls_port,
                challtestsrv_url=challtestsrv_url,
                _pebble_argv=argv,
                _pebble_env=pebble_env,
                _challtestsrv=challtestsrv,
            )
            server._pebble = spawn(argv, server.pebble_log, pebble_env)
            try:
                server._wait_ready(STARTUP_TIMEOUT)
            except PebbleStartupError as exc:
                terminate(server._pebble)
                last_error = exc
                if "address already in use" in server.log_tail():
                    continue  # lost a race for one of the free ports: try fresh ones
                raise
            return server
        assert last_error is not None
        raise last_error
    except BaseException:
        terminate(challtestsrv)
        raise
