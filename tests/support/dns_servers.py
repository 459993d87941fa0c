"""Run real authoritative DNS servers (BIND 9 and PowerDNS) for DNS-01 integration tests.

``start_bind()`` writes a named.conf, TSIG keys and zone files into a work directory and
runs ``named -g`` on 127.0.0.1 on a free port (UDP and TCP); updates go through RFC 2136
with TSIG (``BindServer.nsupdate`` runs the real ``nsupdate`` binary).

``start_powerdns()`` runs ``pdns_server`` with the gsqlite3 backend, the HTTP API and its
webserver on free ports, and creates the zones through the API.

Both run as the current user (root or not) with everything they write (config, pid, lock,
journals, control socket, database, logs) inside the work directory: no ``-u``/``setuid``,
nothing under /run or /var, no rndc listener. They neither need nor touch a system-wide
named/pdns, and several instances (one per xdist worker) can run side by side.

Facts this relies on (BIND 9.18, PowerDNS 4.7):

* named's pid-file and session-keyfile default to /run/named (not writable by non-root),
  so they, and lock-file, point into the work directory. ``notify no`` stops NOTIFYs to
  ns1.<zone> (127.0.0.1 port 53).
* named on a taken port logs "creating IPv4 interface lo failed" and "unable to listen on
  any configured interfaces", then exits 1; pdns_server logs "Address already in use". The
  harness watches the log for these and retries on fresh ports.
* named keeps running with a broken zone file ("not loaded due to errors"); the harness
  fails at once instead of waiting for the SOA timeout.
* named with ``recursion no`` does not chase a CNAME into another zone, even one it serves.
* PowerDNS zones created with ``pdnsutil`` behind the server's back are REFUSED until a
  rediscover; zones created through the API are served at once, so the harness uses the API.
  Caches are off (cache-ttl=0 etc.), so an API change shows in the next query.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import requests

from .ports import free_port, free_udp_tcp_port
from .processes import LOG_TAIL_LINES, log_tail, require_binary, spawn, terminate

__all__ = [
    "BindServer",
    "DnsServerStartupError",
    "PowerDnsServer",
    "start_bind",
    "start_powerdns",
]

STARTUP_TIMEOUT = 20.0
QUERY_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3
_PDNS_SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
_PDNS_SERVER_ID = "localhost"
# Log lines meaning "lost the race for a free port": retry on fresh ports.
# named 9.18 on a taken port: "creating IPv4 interface lo failed; interface ignored", then
# "unable to listen on any configured interfaces" and exit 1.
_PORT_CLASH = re.compile(
    r"address (already )?in use|unable to listen on any configured interfaces|unable to bind",
    re.IGNORECASE,
)
# named keeps running when a zone file is broken; fail fast instead of waiting for a timeout.
_BIND_ZONE_ERROR = re.compile(r"zone \S+: not loaded due to errors")
_DNS_LABELS = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class DnsServerStartupError(RuntimeError):
    """named or pdns_server did not come up; the message holds the log tail."""


# -- shared helpers -----------------------------------------------------------------------


def _zone_name(zone: str) -> str:
    name = zone.rstrip(".")
    if not _DNS_LABELS.match(name):
        raise ValueError(f"unsupported zone name {zone!r}")
    return name


def _conf_path(path: Path) -> str:
    text = str(path)
    if '"' in text or "\\" in text:
        raise ValueError(f"work directory path {text!r} cannot be quoted in a config file")
    return text


def _query(
    name: str, rdtype: str, port: int, timeout: float = QUERY_TIMEOUT
) -> dns.message.Message:
    """One query to 127.0.0.1:port over UDP (TCP if the answer is truncated)."""
    query = dns.message.make_query(dns.name.from_text(name), rdtype)
    response = dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
    if response.flags & dns.flags.TC:
        response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=timeout)
    return response


def _records(name: str, rdtype: str, port: int) -> list[str]:
    """Rdata (presentation format) of every ``rdtype`` RRset in the answer section.

    RRsets for CNAME targets count only if the server put them in the answer itself (BIND
    with ``recursion no`` does not chase a CNAME into another zone, even one it serves).
    NXDOMAIN or an empty answer gives ``[]``; any other failing rcode raises.
    """
    response = _query(name, rdtype, port)
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return []
    if rcode != dns.rcode.NOERROR:
        raise RuntimeError(f"{rdtype} query for {name} returned {dns.rcode.to_text(rcode)}")
    wanted = dns.rdatatype.from_text(rdtype)
    return [rd.to_text() for rrset in response.answer if rrset.rdtype == wanted for rd in rrset]


def _txt(name: str, port: int) -> list[str]:
    """TXT values at ``name`` (each record's strings joined, decoded), ``[]`` if none."""
    response = _query(name, "TXT", port)
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return []
    if rcode != dns.rcode.NOERROR:
        raise RuntimeError(f"TXT query for {name} returned {dns.rcode.to_text(rcode)}")
    return [
        b"".join(rd.strings).decode(errors="replace")
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rd in rrset
    ]


def _soa_answers(zone: str, port: int) -> str | None:
    """None if 127.0.0.1:port answers the zone's SOA, else why not."""
    try:
        response = _query(f"{zone}.", "SOA", port, timeout=0.5)
    except (dns.exception.DNSException, OSError) as exc:
        return f"SOA {zone}: {type(exc).__name__}: {exc}"
    if response.rcode() != dns.rcode.NOERROR:
        return f"SOA {zone}: {dns.rcode.to_text(response.rcode())}"
    if not any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.answer):
        return f"SOA {zone}: no SOA in the answer"
    return None


class _Stoppable:
    """Lifecycle shared by both servers: ``_proc`` and ``log_path`` set by subclasses."""

    _proc: subprocess.Popen[bytes] | None
    log_path: Path

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the server by PID, wait, SIGKILL if it lingers (idempotent)."""
        terminate(self._proc)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> _Stoppable:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- BIND -----------------------------------------------------------------------------------


@dataclass
class BindServer(_Stoppable):
    """A running ``named`` serving the zones given to ``start_bind()`` on 127.0.0.1:port."""

    port: int
    address: str  # "127.0.0.1:PORT", e.g. for Pebble's -dnsserver
    keys: dict[str, tuple[str, str]]  # TSIG key name -> (algorithm, base64 secret)
    pid: int
    workdir: Path
    log_path: Path
    zones: tuple[str, ...]
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __enter__(self) -> BindServer:
        return self

    def txt(self, name: str) -> list[str]:
        """TXT values at ``name`` from this server over UDP; ``[]`` on NXDOMAIN/no answer."""
        return _txt(name, self.port)

    def records(self, name: str, rdtype: str) -> list[str]:
        """Rdata text of the ``rdtype`` RRsets at ``name`` (e.g. a CNAME target)."""
        return _records(name, rdtype, self.port)

    def key_file(
        self, key: str, *, secret: str | None = None, algorithm: str | None = None
    ) -> Path:
        """Write (mode 0600) and return an nsupdate ``-k`` key file for ``key``.

        ``secret``/``algorithm`` override the server's values (to test a bad key); with an
        override ``key`` need not be one of the server's keys.
        """
        known = self.keys.get(key)
        if known is None and secret is None:
            raise KeyError(f"no TSIG key {key!r}; known keys: {sorted(self.keys)}")
        overridden = secret is not None or algorithm is not None
        algo = algorithm or (known[0] if known is not None else "hmac-sha256")
        if secret is None:
            assert known is not None
            secret = known[1]
        suffix = f".{secrets.token_hex(4)}" if overridden else ""
        path = self.workdir / f"nsupdate-{key}{suffix}.key"
        _write_private(path, _key_statement(key, algo, secret))
        return path

    def nsupdate(
        self,
        commands: str,
        key: str,
        *,
        secret: str | None = None,
        algorithm: str | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``nsupdate -k KEYFILE`` against this server.

        ``server 127.0.0.1 PORT`` is prepended to ``commands`` and ``send`` appended, e.g.
        ``nsupdate("zone example.com.\\nupdate add _acme-challenge.example.com. 60 TXT t", k)``.
        Never raises on failure: check ``returncode`` (nsupdate exits 2 on REFUSED or a
        TSIG error) and ``stderr``. ``secret``/``algorithm`` as for ``key_file``.
        """
        nsupdate = require_binary("nsupdate", "bind9-dnsutils", "DNS-01")
        key_path = self.key_file(key, secret=secret, algorithm=algorithm)
        script = f"server 127.0.0.1 {self.port}\n{commands.rstrip()}\nsend\n"
        return subprocess.run(
            [nsupdate, "-k", str(key_path)],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _write_private(path: Path, text: str) -> None:
    """Create/replace ``path`` with mode 0600 from the start (secrets never world-readable)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _key_statement(name: str, algorithm: str, secret: str) -> str:
    return f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n'


def _generate_tsig_secret(name: str, algorithm: str) -> str:
    """A fresh secret of the right size for ``algorithm``, made by BIND's tsig-keygen."""
    keygen = require_binary("tsig-keygen", "bind9", "DNS-01")
    result = subprocess.run(
        [keygen, "-a", algorithm, name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    match = re.search(r'secret\s+"([^"]+)"', result.stdout)
    if result.returncode != 0 or match is None:
        raise ValueError(
            f"tsig-keygen -a {algorithm} {name} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    secret = match.group(1)
    base64.b64decode(secret, validate=True)
    return secret


def _zone_file(zone: str, lines: Sequence[str]) -> str:
    head = [
        f"$ORIGIN {zone}.",
        "$TTL 60",
        f"@ 60 IN SOA ns1.{zone}. hostmaster.{zone}. (1 3600 600 86400 60)",
        f"@ 60 IN NS ns1.{zone}.",
        "ns1 60 IN A 127.0.0.1",
    ]
    return "\n".join([*head, *lines]) + "\n"


def _named_conf(
    workdir: Path, port: int, zones: Mapping[str, Sequence[str]], recursion: bool = False
) -> str:
    wd = _conf_path(workdir)
    parts = [
        f'include "{wd}/tsig-keys.conf";',
        "options {",
        f'    directory "{wd}";',
        f'    pid-file "{wd}/named.pid";',
        f'    lock-file "{wd}/named.lock";',
        f'    session-keyfile "{wd}/session.key";',
        f'    managed-keys-directory "{wd}";',
        f"    listen-on port {port} {{ 127.0.0.1; }};",
        "    listen-on-v6 { none; };",
        # With recursion (for 127.0.0.1 only) named chases a CNAME into another zone it
        # serves, as a resolver would; Pebble's VA asks this server and follows nothing.
        "    recursion yes; allow-recursion { 127.0.0.1; };" if recursion else "    recursion no;",
        "    dnssec-validation no;",
        "    allow-query { any; };",
        "    notify no;",
        "};",
        "controls { };",
    ]
    for zone, grants in zones.items():
        parts += [
            f'zone "{zone}" {{',
            "    type primary;",
            f'    file "db.{zone}";',
        ]
        if grants:
            rules = " ".join(f"grant {key} zonesub TXT;" for key in grants)
            parts.append(f"    update-policy {{ {rules} }};")
        parts.append("};")
    return "\n".join(parts) + "\n"


def start_bind(
    workdir: Path,
    zones: Mapping[str, Sequence[str]],
    keys: Mapping[str, Sequence[str]],
    algorithm: str = "hmac-sha256",
    *,
    recursion: bool = False,
) -> BindServer:
    """Start ``named`` authoritative for ``zones`` and wait until each zone answers SOA.

    :param workdir: config, zone files, journals, keys and named.log go here (created if
        missing; must be writable by the current user).
    :param zones: zone name (e.g. "example.com") -> extra zone-file lines, e.g.
        ``"_acme-challenge.alias 60 IN CNAME _acme-challenge.alias.example.net."``; each zone
        gets SOA, ``NS ns1.<zone>.`` and ``ns1 A 127.0.0.1`` (TTL 60) automatically.
    :param keys: TSIG key name -> zones it may update (``grant KEY zonesub TXT``: TXT records
        at or below the zone apex only). A zone no key lists refuses all updates.
    :param algorithm: TSIG algorithm for every key (as BIND spells it).
    """
    named = require_binary("named", "bind9", "DNS-01")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    zone_lines = {_zone_name(zone): list(lines) for zone, lines in zones.items()}
    grants: dict[str, list[str]] = {zone: [] for zone in zone_lines}
    key_secrets: dict[str, tuple[str, str]] = {}
    for key, key_zones in keys.items():
        if not _DNS_LABELS.match(key.rstrip(".")):
            raise ValueError(f"unsupported TSIG key name {key!r}")
        for zone in key_zones:
            name = _zone_name(zone)
            if name not in grants:
                raise ValueError(f"key {key!r} lists zone {zone!r}, which is not in zones")
            grants[name].append(key)
        key_secrets[key] = (algorithm, _generate_tsig_secret(key, algorithm))

    _write_private(
        workdir / "tsig-keys.conf",
        "".join(_key_statement(name, alg, sec) for name, (alg, sec) in key_secrets.items()),
    )
    for zone, lines in zone_lines.items():
        (workdir / f"db.{zone}").write_text(_zone_file(zone, lines))
        # A journal from an earlier run in the same directory would not match the new file.
        (workdir / f"db.{zone}.jnl").unlink(missing_ok=True)

    log_path = workdir / "named.log"
    conf_path = workdir / "named.conf"
    last_error = ""
    for _ in range(_PORT_ATTEMPTS):
        port = free_udp_tcp_port()
        conf_path.write_text(_named_conf(workdir, port, grants, recursion))
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        proc = spawn([named, "-g", "-4", "-n", "1", "-c", str(conf_path)], log_path)
        try:
            problem = _wait_bind(proc, port, list(zone_lines), log_path, log_offset)
        except BaseException:
            terminate(proc)
            raise
        if problem is None:
            return BindServer(
                port=port,
                address=f"127.0.0.1:{port}",
                keys=dict(key_secrets),
                pid=proc.pid,
                workdir=workdir,
                log_path=log_path,
                zones=tuple(zone_lines),
                _proc=proc,
            )
        terminate(proc)
        last_error = problem
        if not problem.startswith("port clash"):
            break
    raise DnsServerStartupError(
        f"named did not start ({last_error}); last lines of {log_path}:\n{log_tail(log_path)}"
    )


def _log_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _wait_bind(
    proc: subprocess.Popen[bytes], port: int, zones: Sequence[str], log_path: Path, offset: int
) -> str | None:
    """None once every zone answers SOA over UDP; else why not ("port clash: ..." to retry)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "no attempt yet"
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        log = _log_since(log_path, offset)
        if _PORT_CLASH.search(log):
            return f"port clash: port {port} is taken"
        if exited:
            return f"exited with status {proc.returncode} during startup"
        zone_error = _BIND_ZONE_ERROR.search(log)
        if zone_error:
            return zone_error.group(0)
        pending = [p for p in (_soa_answers(zone, port) for zone in zones) if p is not None]
        if not pending:
            return None
        last = pending[0]
        time.sleep(0.1)
    return f"no SOA answer on 127.0.0.1:{port} within {STARTUP_TIMEOUT:g}s ({last})"


# -- PowerDNS -----------------------------------------------------------------------------


@dataclass
class PowerDnsServer(_Stoppable):
    """A running ``pdns_server`` (gsqlite3 backend, HTTP API on)."""

    dns_port: int
    dns_address: str  # "127.0.0.1:PORT"
    api_url: str  # "http://127.0.0.1:PORT" (lexicon's pdns_server)
    api_key: str  # X-API-Key (lexicon's auth_token)
    pid: int
    workdir: Path
    log_path: Path
    zones: tuple[str, ...]
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __enter__(self) -> PowerDnsServer:
        return self

    @property
    def server_url(self) -> str:
        """``{api_url}/api/v1/servers/localhost``: zones live under ``/zones/<zone>.``."""
        return f"{self.api_url}/api/v1/servers/{_PDNS_SERVER_ID}"

    def txt(self, name: str) -> list[str]:
        """TXT values at ``name`` from this server over UDP; ``[]`` on NXDOMAIN/no answer."""
        return _txt(name, self.dns_port)

    def records(self, name: str, rdtype: str) -> list[str]:
        """Rdata text of the ``rdtype`` RRsets at ``name``."""
        return _records(name, rdtype, self.dns_port)


def _pdns_conf(workdir: Path, dns_port: int, api_port: int, api_key: str) -> str:
    wd = _conf_path(workdir)
    settings = {
        "launch": "gsqlite3",
        "gsqlite3-database": f"{wd}/pdns.sqlite3",
        "local-address": "127.0.0.1",
        "local-port": str(dns_port),
        "api": "yes",
        "api-key": api_key,
        "webserver": "yes",
        "webserver-address": "127.0.0.1",
        "webserver-port": str(api_port),
        "webserver-allow-from": "127.0.0.1",
        "socket-dir": wd,
        "daemon": "no",
        "guardian": "no",
        "disable-syslog": "yes",
        "loglevel": "4",
        # SOA for API-created zones (the default MNAME is a.misconfigured.dns.server.invalid).
        "default-soa-content": "ns1.@ hostmaster.@ 0 3600 600 86400 60",
        # No caches: a test sees each API change in the next query.
        "cache-ttl": "0",
        "negquery-cache-ttl": "0",
        "query-cache-ttl": "0",
        "zone-cache-refresh-interval": "0",
        "receiver-threads": "1",
        "distributor-threads": "1",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def start_powerdns(workdir: Path, zones: Sequence[str]) -> PowerDnsServer:
    """Start ``pdns_server``, create ``zones`` (kind Native, NS ns1.<zone>.) through its API,
    and wait until the API answers and each zone answers SOA over UDP.

    :param workdir: pdns.conf, the SQLite database, the control socket and pdns.log go here
        (created if missing; must be writable by the current user).
    """
    pdns = require_binary("pdns_server", "pdns-server", "DNS-01")
    if not _PDNS_SCHEMA.is_file():
        raise RuntimeError(
            f"{_PDNS_SCHEMA} is missing: install the Debian package 'pdns-backend-sqlite3' "
            "(scripts/ensure-test-deps.sh does)."
        )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    zone_names = [_zone_name(zone) for zone in zones]
    api_key = secrets.token_urlsafe(24)
    log_path = workdir / "pdns.log"
    db_path = workdir / "pdns.sqlite3"

    last_error = ""
    for _ in range(_PORT_ATTEMPTS):
        db_path.unlink(missing_ok=True)
        with sqlite3.connect(db_path) as db:
            db.executescript(_PDNS_SCHEMA.read_text())
        db.close()
        dns_port, api_port = free_udp_tcp_port(), free_port()
        _write_private(workdir / "pdns.conf", _pdns_conf(workdir, dns_port, api_port, api_key))
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        proc = spawn([pdns, f"--config-dir={workdir}"], log_path)
        server = PowerDnsServer(
            dns_port=dns_port,
            dns_address=f"127.0.0.1:{dns_port}",
            api_url=f"http://127.0.0.1:{api_port}",
            api_key=api_key,
            pid=proc.pid,
            workdir=workdir,
            log_path=log_path,
            zones=tuple(zone_names),
            _proc=proc,
        )
        try:
            problem = _wait_powerdns(server, proc, log_offset)
        except BaseException:
            terminate(proc)
            raise
        if problem is None:
            return server
        terminate(proc)
        last_error = problem
        if not problem.startswith("port clash"):
            break
    raise DnsServerStartupError(
        f"pdns_server did not start ({last_error}); last lines of {log_path}:\n{log_tail(log_path)}"
    )


def _wait_powerdns(
    server: PowerDnsServer, proc: subprocess.Popen[bytes], offset: int
) -> str | None:
    """Wait for the API, create the zones, wait for their SOA; None on success, else why not."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    headers = {"X-API-Key": server.api_key}
    last = "no attempt yet"
    created: set[str] = set()
    with requests.Session() as session:
        session.headers.update(headers)
        session.trust_env = False  # never send 127.0.0.1 through a proxy from the environment
        while time.monotonic() < deadline:
            exited = proc.poll() is not None
            if _PORT_CLASH.search(_log_since(server.log_path, offset)):
                return f"port clash: port {server.dns_port} or the API port is taken"
            if exited:
                return f"exited with status {proc.returncode} during startup"
            try:
                resp = session.get(server.server_url, timeout=2)
                if resp.status_code != 200:
                    last = f"HTTP {resp.status_code} from {resp.url}: {resp.text[:200]}"
                    time.sleep(0.1)
                    continue
                for zone in server.zones:
                    if zone in created:
                        continue
                    resp = session.post(
                        f"{server.server_url}/zones",
                        json={
                            "name": f"{zone}.",
                            "kind": "Native",
                            "nameservers": [f"ns1.{zone}."],
                        },
                        timeout=10,
                    )
                    if resp.status_code != 201:
                        # A zone is not a startup race: a refusal here will not go away.
                        return f"creating zone {zone}: HTTP {resp.status_code}: {resp.text[:300]}"
                    created.add(zone)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
                continue
            pending = [p for p in (_soa_answers(z, server.dns_port) for z in server.zones) if p]
            if not pending:
                return None
            last = pending[0]
            time.sleep(0.1)
    return (
        f"API {server.api_url} and SOA on {server.dns_address} not ready within "
        f"{STARTUP_TIMEOUT:g}s ({last})"
    )
