"""The agent's configuration: one TOML file (`certbroker agent --config FILE`).

    broker = "https://broker.example.com"   # where `certbroker serve` answers
    token_file = "/etc/certbroker/agent.token"   # or token = "cbc_…"
    http01_listen = "0.0.0.0:80"            # where the CA's HTTP-01 requests arrive
    state_file = "/var/lib/certbroker-agent/state.json"   # default: next to this file
    ca_bundle = "/etc/certbroker/broker-ca.pem"   # to trust the broker's HTTPS, if private
    transport = "auto"   # websocket, falling back to long polls; or "websocket", "long-poll"

    [[certificate]]
    names = ["gw1.example.com"]
    cert_path = "/etc/ssl/gw1/fullchain.pem"
    key_path = "/etc/ssl/gw1/privkey.pem"
    combined_path = "/etc/haproxy/gw1.pem"   # optional: key + chain in one file
    pkcs12_path = "/etc/ssl/gw1/gw1.p12"     # optional, with pkcs12_password
    owner = "root:ssl-cert"                  # optional
    mode = 0o600                             # key files; certificates are 0644
    reload = "systemctl reload nginx"
    install_days_before_expiry = 30          # optional: hold a renewed one until then
    key = "local"                            # or "broker"

Every mistake is one line naming the key and what to do (UsageError)."""

from __future__ import annotations

import contextlib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from certbroker.domain.agents import KeyMode
from certbroker.domain.errors import UsageError

log = logging.getLogger("certbroker.agent")
TOP_KEYS = {"broker", "token", "token_file", "http01_listen", "state_file", "ca_bundle",
            "transport", "insecure_http", "certificate"}  # fmt: skip
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
TRANSPORTS = ("auto", "websocket", "long-poll")
CERT_KEYS = {"names", "cert_path", "key_path", "combined_path", "pkcs12_path",
             "pkcs12_password", "owner", "mode", "reload", "install_days_before_expiry",
             "key"}  # fmt: skip


@dataclass(frozen=True)
class CertificateConfig:
    names: tuple[str, ...]
    cert_path: Path
    key_path: Path
    combined_path: Path | None = None
    pkcs12_path: Path | None = None
    pkcs12_password: str | None = None
    owner: str | None = None
    mode: int = 0o600
    reload: str | None = None
    install_days_before_expiry: float | None = None  # None: at once
    key: KeyMode = KeyMode.LOCAL

    @property
    def ref(self) -> str:
        """What the state file knows it by: its names, sorted."""
        return ",".join(sorted(self.names))


@dataclass(frozen=True)
class AgentConfig:
    broker: str
    token: str
    http01_host: str
    http01_port: int
    state_file: Path
    certificates: tuple[CertificateConfig, ...]
    ca_bundle: Path | None = None
    transport: str = "auto"
    # A plain http:// broker other than this machine: the token (and broker-held keys)
    # cross the network unencrypted; refused unless the configuration says so.
    insecure_http: bool = False

    @property
    def plain_http_elsewhere(self) -> bool:
        parts = urlsplit(self.broker)
        return parts.scheme == "http" and (parts.hostname or "") not in LOOPBACK_HOSTS

    @property
    def websocket_url(self) -> str:
        parts = urlsplit(self.broker)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/api/v1/agent/ws"

    @property
    def poll_url(self) -> str:
        return f"{self.broker}/api/v1/agent/poll"


def _text(table: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise UsageError(f"{where}: `{key}` is missing")
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}: `{key}` must be a non-empty string")
    return value.strip()


def _path(table: dict[str, Any], key: str, where: str, base: Path) -> Path | None:
    text = _text(table, key, where, required=False)
    if text is None:
        return None
    path = Path(text)
    return path if path.is_absolute() else base / path


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"http01_listen {text!r}: give host:port, such as 0.0.0.0:80")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the edge faces the CA


def _certificate(table: Any, n: int, base: Path) -> CertificateConfig:
    where = f"[[certificate]] {n}"
    if not isinstance(table, dict):
        raise UsageError(f"{where}: must be a table")
    unknown = sorted(set(table) - CERT_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                         + ", ".join(sorted(CERT_KEYS)))  # fmt: skip
    names = table.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        raise UsageError(f"{where}: `names` must be a list of DNS names")
    cert_path = _path(table, "cert_path", where, base)
    key_path = _path(table, "key_path", where, base)
    if cert_path is None or key_path is None:
        raise UsageError(f"{where}: `cert_path` and `key_path` are needed")
    pkcs12_path = _path(table, "pkcs12_path", where, base)
    password = _text(table, "pkcs12_password", where, required=False)
    if pkcs12_path is not None and password is None:
        raise UsageError(f"{where}: `pkcs12_path` needs `pkcs12_password`")
    mode = table.get("mode", 0o600)
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise UsageError(f"{where}: `mode` must be a file mode such as 0o600")
    days = table.get("install_days_before_expiry")
    if days is not None and (not isinstance(days, int | float) or days <= 0):
        raise UsageError(f"{where}: `install_days_before_expiry` must be a number of days")
    return CertificateConfig(
        names=tuple(n.strip().lower() for n in names),
        cert_path=cert_path,
        key_path=key_path,
        combined_path=_path(table, "combined_path", where, base),
        pkcs12_path=pkcs12_path,
        pkcs12_password=password,
        owner=_text(table, "owner", where, required=False),
        mode=mode,
        reload=_text(table, "reload", where, required=False),
        install_days_before_expiry=float(days) if days is not None else None,
        key=KeyMode.parse(_text(table, "key", where, required=False) or "local"),
    )


def load_config(path: Path) -> AgentConfig:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    where = str(path)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                         + ", ".join(sorted(TOP_KEYS)))  # fmt: skip
    broker = _text(data, "broker", where) or ""
    if urlsplit(broker).scheme not in ("http", "https") or not urlsplit(broker).netloc:
        raise UsageError(f"{where}: `broker` must be a URL such as https://broker.example.com")
    token = _text(data, "token", where, required=False)
    token_file = _path(data, "token_file", where, base)
    if (token is None) == (token_file is None):
        raise UsageError(f"{where}: give `token` or `token_file` (the client's cbc_ token)")
    holder = token_file if token_file is not None else path
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"{where}: token_file {token_file}: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        if holder.stat().st_mode & 0o077:
            log.warning(
                "agent: %s holds the client's token and others may read it; chmod 600 it",
                holder,
            )
    if not token or not token.startswith("cbc_"):
        raise UsageError(f"{where}: the token must be a client token (cbc_…, `client add`)")
    listen = _text(data, "http01_listen", where, required=False) or "0.0.0.0:80"
    host, port = _listen(listen)
    tables = data.get("certificate", [])
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{where}: no [[certificate]] table; add one per certificate")
    certificates = tuple(_certificate(t, n, base) for n, t in enumerate(tables, 1))
    refs = [c.ref for c in certificates]
    if len(set(refs)) != len(refs):
        raise UsageError(f"{where}: two [[certificate]] tables have the same names")
    transport = _text(data, "transport", where, required=False) or "auto"
    if transport not in TRANSPORTS:
        raise UsageError(f"{where}: transport {transport!r}: choose {', '.join(TRANSPORTS)}")
    insecure = data.get("insecure_http", False)
    if not isinstance(insecure, bool):
        raise UsageError(f"{where}: `insecure_http` must be true or false")
    parts = urlsplit(broker)
    if parts.scheme == "http" and (parts.hostname or "") not in LOOPBACK_HOSTS and not insecure:
        raise UsageError(
            f"{where}: broker {broker} is plain http://: the client's token, and the keys the "
            "broker holds, would cross the network unencrypted; use https://, or set "
            "insecure_http = true to accept that"
        )
    return AgentConfig(
        insecure_http=insecure,
        transport=transport,
        broker=broker.rstrip("/"),
        token=token,
        http01_host=host,
        http01_port=port,
        state_file=_path(data, "state_file", where, base) or base / "agent-state.json",
        certificates=certificates,
        ca_bundle=_path(data, "ca_bundle", where, base),
    )
