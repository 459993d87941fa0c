"""Effective configuration: TOML file < environment (CERTBROKER_*) < command-line flags.

Each setting remembers where its value came from, so `certbroker config show` can say so.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from certbroker.domain.dns import parse_servers
from certbroker.domain.errors import ConfigError, UsageError
from certbroker.logs import parse_levels

DEFAULT_CONFIG_FILE = Path("certbroker.toml")
ENV_PREFIX = "CERTBROKER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
CLIENT_LIMITS = (  # per client, each at least 1
    "client_zone_certificates",
    "client_connections",
    "client_pending_requests",
    "client_approval_requests",
)


@dataclass
class Settings:
    data_dir: Path = Path("var")
    database_url: str = ""  # empty: SQLite file in the data dir
    http01_port: int = 80
    http01_address: str = "0.0.0.0"  # noqa: S104 - the CA must reach the responder from outside
    # "http://host:port": where the responder forwards what it would answer 404 (a web
    # server moved behind certbroker on port 80); empty: 404.
    http01_upstream: str = ""
    listen: str = "127.0.0.1:8080"
    # Reverse proxies whose X-Forwarded-For / -Proto are believed: the client's address
    # (log-in throttling, a token's last use) and https (Secure cookies) come from them.
    trusted_proxies: str = "127.0.0.1,::1"
    workers: int = 8  # worker threads in each serve process
    worker_processes: int = 0  # processes `serve` runs workers in; 0: one per CPU core
    log_level: str = "info"
    log_levels: str = ""  # per component: "acme=debug,scheduler=warning" (certbroker.logs)
    master_key: str = field(default="", repr=False)  # empty: <data_dir>/master.key
    # A second key this process opens with, and seals with once `rotate-master-key` makes
    # it current: given to every node before a rotation, so they go on serving through it.
    master_key_next: str = field(default="", repr=False)
    # The first start's `admin` password; empty: a generated one, printed once.
    admin_password: str = field(default="", repr=False)
    # A bearer token `/metrics` asks for; empty: it answers anyone who reaches it.
    metrics_token: str = field(default="", repr=False)
    # `/metrics` without a token on an address other than loopback (it names every
    # certificate): serve refuses that unless this says so.
    metrics_public: bool = False
    order_timeout: float = 300.0  # seconds one order may take before it counts as failed
    # This node's name in its leases (empty: the host name); nodes need names of their own.
    node_name: str = ""
    lease_seconds: float = 120.0  # a dead node's orders are resumed by others after this
    retry_attempts: int = 4  # tries of one order through transient CA failures, in all
    renew_before_days: float = 0.0  # 0: when one third of the lifetime is left
    scheduler_interval: float = 60.0  # seconds between looks for due renewals in serve
    deploy_retry_first: float = 30.0  # seconds before a failed deployment's first retry
    webhook_retry_first: float = 30.0  # seconds before a failed webhook delivery's first retry
    validation_failures_per_hour: int = 3  # per account and name; Let's Encrypt allows 5
    dns_resolvers: str = ""  # "IP[:PORT],…" for every DNS lookup; empty: the system's
    dns_check_servers: str = ""  # "IP[:PORT],…" checked for propagation; "off"; empty: auto
    dns_propagation_timeout: float = 120.0  # seconds until unseen TXT records count as failed
    # Mail (the console's settings win over these): the SMTP server, its security (none,
    # starttls, tls), port (0: 25, 587 or 465 by security), log-in and the sender.
    smtp_host: str = ""  # empty: no mail is sent
    smtp_port: int = 0
    smtp_security: str = "starttls"
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_from: str = ""
    smtp_ca_file: str = ""  # PEM CA certificates the SMTP server's TLS certificate chains to
    notify_to: str = ""  # "a@example.com,b@example.com": who gets mail when nobody else does
    expiry_thresholds: str = "30,14,7,3,1"  # days left at which an expiry warning is sent
    public_url: str = ""  # the console's address in mails; empty: http://<listen>
    mail_retry_first: float = 60.0  # seconds before a failed mail's first retry
    # What one client's token may make the broker spend: the
    # certificates it may hold besides one per exact name on its allow-list, when it has a
    # '*.zone' pattern; its websockets and long polls open at once on a node; its orders
    # under way; its CSR requests waiting for an admin.
    client_zone_certificates: int = 100
    client_connections: int = 10
    client_pending_requests: int = 100
    client_approval_requests: int = 20
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    SECRET_KEYS = (
        "master_key", "master_key_next", "admin_password", "metrics_token", "smtp_password"
    )  # fmt: skip

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'certbroker.db').absolute()}"

    @property
    def effective_worker_processes(self) -> int:
        if self.worker_processes:
            return self.worker_processes
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)

    def metrics_refusal(self) -> str | None:
        """Why `serve` must not start as configured: `/metrics` names every certificate,
        and without metrics_token it answers anyone who reaches it, which on an address
        other than loopback is more than this machine. None: it may."""
        host, _ = self.listen_address()
        if self.metrics_token or self.metrics_public or _loopback(host):
            return None
        return (
            f"listen {self.listen} is reachable from other machines, and /metrics (every "
            "certificate's names) would answer anyone there: set metrics_token "
            "(CERTBROKER_METRICS_TOKEN) for your scraper to send, or metrics_public = true "
            "(CERTBROKER_METRICS_PUBLIC=1) to serve it to anyone on purpose"
        )

    def masked(self) -> dict[str, tuple[str, str]]:
        """Every setting as (shown value, source), secrets masked."""
        shown: dict[str, tuple[str, str]] = {}
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            text = str(value)
            if f.name in self.SECRET_KEYS and value:
                text = "********"
            elif f.name == "database_url":
                text = mask_url_password(self.effective_database_url)
            elif f.name == "worker_processes" and not value:
                text = f"0 (one per CPU core: {self.effective_worker_processes})"
            shown[f.name] = (text, self.sources.get(f.name, "default"))
        return shown


def mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:********@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


_FIELD_TYPES: dict[str, type] = {
    "data_dir": Path,
    "database_url": str,
    "http01_port": int,
    "http01_address": str,
    "http01_upstream": str,
    "listen": str,
    "trusted_proxies": str,
    "workers": int,
    "worker_processes": int,
    "log_level": str,
    "log_levels": str,
    "master_key": str,
    "master_key_next": str,
    "admin_password": str,
    "metrics_token": str,
    "metrics_public": bool,
    "order_timeout": float,
    "node_name": str,
    "lease_seconds": float,
    "retry_attempts": int,
    "renew_before_days": float,
    "scheduler_interval": float,
    "deploy_retry_first": float,
    "webhook_retry_first": float,
    "validation_failures_per_hour": int,
    "dns_resolvers": str,
    "dns_check_servers": str,
    "dns_propagation_timeout": float,
    "smtp_host": str,
    "smtp_port": int,
    "smtp_security": str,
    "smtp_user": str,
    "smtp_password": str,
    "smtp_from": str,
    "smtp_ca_file": str,
    "notify_to": str,
    "expiry_thresholds": str,
    "public_url": str,
    "mail_retry_first": float,
    "client_zone_certificates": int,
    "client_connections": int,
    "client_pending_requests": int,
    "client_approval_requests": int,
}

# TOML tables ([renewal], [dns]) a configuration file may group settings in, mapped to the
# flat settings.
_TABLE_KEYS = {
    ("renewal", "days_before_expiry"): "renew_before_days",
    ("renewal", "scheduler_interval"): "scheduler_interval",
    ("dns", "resolvers"): "dns_resolvers",
    ("dns", "check_servers"): "dns_check_servers",
    ("dns", "propagation_timeout"): "dns_propagation_timeout",
    ("smtp", "host"): "smtp_host",
    ("smtp", "port"): "smtp_port",
    ("smtp", "security"): "smtp_security",
    ("smtp", "user"): "smtp_user",
    ("smtp", "password"): "smtp_password",
    ("smtp", "from"): "smtp_from",
    ("smtp", "ca_file"): "smtp_ca_file",
    ("notify", "to"): "notify_to",
    ("notify", "expiry_thresholds"): "expiry_thresholds",
    ("notify", "public_url"): "public_url",
}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if kind is bool:
            result: Any = _flag(value)
        elif kind is int:
            if isinstance(value, bool):
                raise ValueError
            result = int(value)
        elif kind is float:
            result = float(value)
        elif kind is Path:
            result = Path(str(value)).expanduser()
        else:
            result = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} must be {kind.__name__}, not {value!r}") from None
    return result


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _flag(value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case), or a TOML boolean."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _upstream_problem(settings: Settings) -> str:
    """What is wrong with http01_upstream ("" if nothing)."""
    expected = "must look like http://HOST:PORT (http://127.0.0.1:8081)"
    try:
        parts = urlsplit(settings.http01_upstream)
        port = parts.port
    except ValueError:
        return expected
    if (
        parts.scheme != "http"
        or not parts.hostname
        or port is None
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return expected
    if port == settings.http01_port and parts.hostname in (
        "localhost",
        "127.0.0.1",
        "::1",
        settings.http01_address,
    ):
        return "is the responder itself (http01_port); give the web server behind it"
    return ""


def _validate(settings: Settings) -> None:
    def refuse(name: str, problem: str) -> ConfigError:
        # Name where the bad value came from: the file, the variable or the flag.
        source = settings.sources.get(name, "default")
        where = f"--{name.replace('_', '-')}" if source == "flag" else source
        return ConfigError(f"{where}: {problem}")

    if not 0 < settings.http01_port < 65536:
        raise refuse(
            "http01_port", f"http01_port {settings.http01_port} is not a TCP port (1-65535)"
        )
    if settings.http01_upstream:
        problem = _upstream_problem(settings)
        if problem:
            raise refuse(
                "http01_upstream",
                f"http01_upstream {settings.http01_upstream!r} {problem}",
            )
    host, _, port = settings.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise refuse(
            "listen", f"listen {settings.listen!r} must look like HOST:PORT (127.0.0.1:8080)"
        )
    if settings.workers < 1:
        raise refuse("workers", f"workers must be at least 1, not {settings.workers}")
    if settings.worker_processes < 0:
        raise refuse(
            "worker_processes",
            "worker_processes must be 0 (one per CPU core) or more, "
            f"not {settings.worker_processes}",
        )
    if settings.log_level.lower() not in LOG_LEVELS:
        raise refuse(
            "log_level", f"log_level {settings.log_level!r}: choose one of {', '.join(LOG_LEVELS)}"
        )
    settings.log_level = settings.log_level.lower()
    source = settings.sources.get("log_levels", "default")
    parse_levels(settings.log_levels, f"{source}: log_levels")
    if not 0 < settings.order_timeout < math.inf:
        raise refuse(
            "order_timeout",
            f"order_timeout must be a positive number of seconds, not {settings.order_timeout:g}",
        )
    if settings.retry_attempts < 0:
        raise refuse(
            "retry_attempts", f"retry_attempts must be 0 or more, not {settings.retry_attempts}"
        )
    if not 0 <= settings.renew_before_days < math.inf:
        raise refuse(
            "renew_before_days",
            "renew_before_days must be a number of days, 0 or more (0: renew when a third "
            f"of the lifetime is left), not {settings.renew_before_days:g}",
        )
    if not 0 < settings.scheduler_interval < math.inf:
        raise refuse(
            "scheduler_interval",
            "scheduler_interval must be a positive number of seconds, "
            f"not {settings.scheduler_interval:g}",
        )
    if not 0 < settings.deploy_retry_first <= 3600:
        raise refuse(
            "deploy_retry_first",
            "deploy_retry_first must be a number of seconds from 0 to 3600 (it doubles up "
            f"to an hour), not {settings.deploy_retry_first:g}",
        )
    if not 0 < settings.webhook_retry_first <= 3600:
        raise refuse(
            "webhook_retry_first",
            "webhook_retry_first must be a number of seconds from 0 to 3600 (it doubles up "
            f"to an hour), not {settings.webhook_retry_first:g}",
        )
    if not 10 <= settings.lease_seconds <= 3600:
        raise refuse(
            "lease_seconds",
            "lease_seconds must be from 10 to 3600 seconds (a dead node's orders wait this "
            f"long), not {settings.lease_seconds:g}",
        )
    if settings.node_name and not all(c.isalnum() or c in "-_." for c in settings.node_name):
        raise refuse(
            "node_name",
            f"node_name {settings.node_name!r}: letters, digits, '-', '_' and '.' only",
        )
    if settings.validation_failures_per_hour < 1:
        raise refuse(
            "validation_failures_per_hour",
            "validation_failures_per_hour must be at least 1 (Let's Encrypt allows 5), "
            f"not {settings.validation_failures_per_hour}",
        )
    for name in ("dns_resolvers", "dns_check_servers"):
        value = str(getattr(settings, name))
        if name == "dns_check_servers" and value.strip().lower() == "off":
            settings.dns_check_servers = "off"
            continue
        try:
            parse_servers(value, name)
        except UsageError as exc:
            raise refuse(name, str(exc)) from None
    if not 0 < settings.dns_propagation_timeout < math.inf:
        raise refuse(
            "dns_propagation_timeout",
            "dns_propagation_timeout must be a positive number of seconds, "
            f"not {settings.dns_propagation_timeout:g}",
        )
    _validate_mail(settings, refuse)
    for name in CLIENT_LIMITS:
        if getattr(settings, name) < 1:
            raise refuse(name, f"{name} must be at least 1, not {getattr(settings, name)}")
    if settings.database_url and "://" not in settings.database_url:
        raise refuse(
            "database_url",
            f"database_url {mask_url_password(settings.database_url)!r} is not a URL "
            "(sqlite:///path/file.db or postgresql+psycopg://user:pw@host/db)",
        )


def _validate_mail(settings: Settings, refuse: Callable[[str, str], ConfigError]) -> None:
    from certbroker.domain.notify import (
        check_port,
        check_public_url,
        check_security,
        parse_thresholds,
    )

    checks: list[tuple[str, Callable[[], object]]] = [
        ("smtp_security", lambda: check_security(settings.smtp_security)),
        ("smtp_port", lambda: check_port(settings.smtp_port)),
        ("expiry_thresholds", lambda: parse_thresholds(settings.expiry_thresholds)),
        ("public_url", lambda: check_public_url(settings.public_url)),
    ]
    for name, check in checks:
        try:
            check()
        except UsageError as exc:
            raise refuse(name, str(exc)) from None
    settings.smtp_security = settings.smtp_security.strip().lower()
    if settings.smtp_from and "@" not in settings.smtp_from:
        raise refuse("smtp_from", f"smtp_from {settings.smtp_from!r} is not an e-mail address")
    if settings.smtp_ca_file and not Path(settings.smtp_ca_file).is_file():
        raise refuse("smtp_ca_file", f"smtp_ca_file {settings.smtp_ca_file}: no such file")
    if not 0 < settings.mail_retry_first <= 3600:
        raise refuse(
            "mail_retry_first",
            f"mail_retry_first must be seconds from 0 to 3600, not {settings.mail_retry_first:g}",
        )


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the effective settings. `overrides` are the command-line flags (None = not given)."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    sources: dict[str, str] = {}

    path = config_file
    explicit = path is not None
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        if not path.is_file():
            problem = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {problem}; give a TOML file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        if isinstance(data.get("log_levels"), dict):  # [log_levels] acme = "debug"
            data["log_levels"] = ",".join(f"{k}={v}" for k, v in data["log_levels"].items())
        for (table, sub), flat in _TABLE_KEYS.items():
            section = data.get(table)
            if isinstance(section, dict) and sub in section:
                data[flat] = section.pop(sub)
        for table in {table for table, _ in _TABLE_KEYS}:
            if isinstance(data.get(table), dict):
                section = data.pop(table)
                if section:
                    known = ", ".join(sub for t, sub in _TABLE_KEYS if t == table)
                    raise ConfigError(
                        f"config file {path}: unknown setting {table}.{next(iter(section))} "
                        f"(known in [{table}]: {known})"
                    )
        for key, value in data.items():
            if key not in _FIELD_TYPES:
                known = ", ".join(sorted(_FIELD_TYPES))
                raise ConfigError(f"config file {path}: unknown setting {key!r} (known: {known})")
            setattr(settings, key, _coerce(key, value, f"config file {path}"))
            sources[key] = f"file {path}" if explicit else f"file {path} (default location)"

    for name in _FIELD_TYPES:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and environ[env_name] != "":
            setattr(settings, name, _coerce(name, environ[env_name], env_name))
            sources[name] = f"env {env_name}"

    for name, value in (overrides or {}).items():
        if value is not None:
            setattr(settings, name, _coerce(name, value, f"--{name.replace('_', '-')}"))
            sources[name] = "flag"

    settings.sources = sources
    _validate(settings)
    return settings
