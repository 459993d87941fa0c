"""The tools users script instead of certbroker, run the way they script them: one process
per certificate, against the same Pebble as certbroker, in the same benchmark run.

* certbot (from PyPI, in .bench/certbot-venv): `certbot certonly --standalone -d NAME`;
* lego (Debian): `lego --domains NAME --http run`;
* uacme (Debian): `uacme -h HOOK issue NAME`, its hook as the uacme.sh it ships: the key
  authorization written to a webroot that nginx (Debian) serves on Pebble's http_port;
* cb-cli: certbroker scripted the same way, `certbroker cert request NAME --wait`;
* cb-batch: certbroker's CLI given them all at once, one `certbroker cert request --from
  FILE --wait` (one name a line), which obtains them `workers` (8) at a time.

Each has its account registered before the timed part (certbot `register`, uacme `new`,
then for all but certbot one warm-up certificate), so the figure is issuance alone. All
answer HTTP-01 on Pebble's http_port (certbot, lego and certbroker themselves, uacme through
nginx); in always-valid mode Pebble does not look. `scripts/ensure-bench-deps.sh` (run by
`make bench`) installs the peers.

uacme 1.7.4 (Debian 12) has no option for the CA to trust (UACME_CAINFO came in 1.7.6):
its libcurl (GnuTLS) reads /etc/ssl/certs. certbot and lego are given Pebble's CA alone
(REQUESTS_CA_BUNDLE, LEGO_CA_CERTIFICATES); so is uacme: the uacme scenario's process (a
child process of bench/issuance.py of its own) takes a mount namespace of its own, where a
directory holding only ca-certificates.crt, Pebble's CA, is bind-mounted over /etc/ssl/certs.
The uacme processes it starts see it; nothing else on the machine does. That needs root, as
`make bench` is run here. With Debian's whole store there instead, each uacme run costs
about half a second of CPU more: libcurl loads the store again for each of uacme's requests
(a new handle, a new connection, each time), and an issuance makes about ten.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CERTBOT = ROOT / ".bench" / "certbot-venv" / "bin" / "certbot"
TOOLS = ("certbot", "lego", "uacme")  # not certbroker: their own failures never fail a run
SCRIPTED = (*TOOLS, "cb-cli")  # one process per certificate
PEERS = (*SCRIPTED, "cb-batch")  # cb-batch: one `cert request --from FILE --wait` for all
TIMEOUT = 120
SYSTEM_CERTS = Path("/etc/ssl/certs")  # libcurl's CA path and bundle, so uacme's


class PeerMissing(RuntimeError):
    pass


def versions() -> dict[str, str]:
    found = {}
    for name, argv, status in (
        ("certbot", [str(CERTBOT), "--version"], 0),
        ("lego", ["lego", "--version"], 0),
        ("uacme", ["uacme", "-V"], 2),  # "uacme: version 1.7.4" on stderr, its licence, exit 2
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
            lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
            if proc.returncode == status and lines:
                found[name] = lines[0].replace("uacme: version", "uacme")
    for package in ("lego", "uacme"):  # lego says "dev"
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            found[f"{package} (Debian)"] = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                text=True, check=True,
            ).stdout.strip()  # fmt: skip
    return found


# -- uacme's surroundings: the CA it trusts, its hook, nginx ---------------------------------

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000

UACME_HOOK = """#!/bin/sh
# uacme's challenge hook, as the uacme.sh it ships: METHOD TYPE IDENT TOKEN AUTH.
# http-01 only (another type declined, so uacme picks http-01): the key authorization as a
# file in the webroot nginx serves, removed once the challenge is done or failed.
[ "$2" = http-01 ] || exit 1
case "$1" in
    begin) printf '%s' "$5" > {challenges}/"$4" ;;
    done | failed) rm -f {challenges}/"$4" ;;
    *) exit 1 ;;
esac
"""


def trust_for_children(ca_bundle: Path, work: Path) -> None:
    """From now on, the processes this thread starts trust `ca_bundle` alone, as the system
    store (see the module's docstring): this process's own mount namespace, and in it a
    directory holding only ca-certificates.crt (`ca_bundle`) bind-mounted over /etc/ssl/certs."""
    if not SYSTEM_CERTS.is_dir():
        raise PeerMissing(f"uacme: {SYSTEM_CERTS} is missing: apt-get install ca-certificates")
    certs = work / "certs"
    certs.mkdir()
    shutil.copyfile(ca_bundle, certs / "ca-certificates.crt")
    libc = ctypes.CDLL(None, use_errno=True)

    def check(status: int, what: str) -> None:
        if status != 0:
            raise PeerMissing(
                f"uacme: {what} failed ({os.strerror(ctypes.get_errno())}); uacme 1.7.4 trusts "
                f"the CAs in {SYSTEM_CERTS} only, which the benchmark replaces with Pebble's "
                "in a mount namespace of its own: run it as root"
            )

    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Never let the bind mount below propagate to the namespace we came from.
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    check(
        libc.mount(bytes(certs), bytes(SYSTEM_CERTS), None, MS_BIND, None),
        f"bind-mounting {certs} over {SYSTEM_CERTS}",
    )


def write_hook(path: Path, challenges: Path) -> Path:
    path.write_text(UACME_HOOK.format(challenges=shlex.quote(str(challenges))))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def nginx_webroot(work: Path, port: int) -> Iterator[tuple[Path, list[int]]]:
    """nginx (Debian), one worker, serving `work`/www on 127.0.0.1:`port` until the block
    ends; yields the webroot's challenge directory and nginx's PIDs (its worker's CPU
    counts as the tool's). Stopped by its PID."""
    from bench.nginx import children_of, find_nginx, nginx

    binary = find_nginx()
    if binary is None:
        raise PeerMissing("nginx is missing; run `make bench`, which installs it")
    with contextlib.ExitStack() as stack:
        try:
            proc, challenges = stack.enter_context(nginx(binary, work, port))
        except RuntimeError as exc:
            raise PeerMissing(str(exc)) from None
        probe = challenges / "probe"  # a file put there is served
        probe.write_text("probe")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/.well-known/acme-challenge/probe")
            if conn.getresponse().read() != b"probe":
                raise PeerMissing(f"nginx does not serve its webroot: see {work}/error.log")
        finally:
            conn.close()
            probe.unlink()
        yield challenges, [proc.pid, *children_of(proc.pid)]


# -- the peers -------------------------------------------------------------------------------


TIME = Path("/usr/bin/time")  # GNU time (Debian `time`): a tool's own peak RSS


class Peer:
    """One tool, set up in `work` against `directory`; `issue(name)` is one scripted call.
    What it leaves running (uacme's nginx) is stopped when `stack` closes."""

    def __init__(
        self,
        kind: str,
        work: Path,
        directory: str,
        ca_bundle: Path,
        http_port: int,
        key: str,
        stack: contextlib.ExitStack,
    ) -> None:
        self.kind = kind
        self.work = work
        self.directory = directory
        self.port = http_port
        self.key = key  # "ec-p256" or "rsa2048"
        self.helpers: list[int] = []  # processes that work for the tool while it runs
        self.peak_kib = 0  # the largest peak RSS of one call of the tool
        if not TIME.exists():
            raise PeerMissing(f"{TIME} is missing; run `make bench`, which installs it")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CERTBROKER_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        # Each tool runs as installed: certbot's modules are compiled in its venv by pip;
        # certbroker's (installed editable) are compiled once into this cache, not again
        # in every process as PYTHONDONTWRITEBYTECODE, if the shell sets it, would have it.
        self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        if kind == "certbot":
            if not CERTBOT.exists():
                raise PeerMissing(f"{CERTBOT} is missing; run `make bench`, which installs it")
            self.env["REQUESTS_CA_BUNDLE"] = str(ca_bundle)
            self.dirs = [
                f"--config-dir={work / 'certbot' / 'config'}",
                f"--work-dir={work / 'certbot' / 'work'}",
                f"--logs-dir={work / 'certbot' / 'logs'}",
            ]
        elif kind == "lego":
            if shutil.which("lego") is None:
                raise PeerMissing("lego is missing; run `make bench`, which installs it")
            self.env["LEGO_CA_CERTIFICATES"] = str(ca_bundle)
        elif kind == "uacme":
            if shutil.which("uacme") is None:
                raise PeerMissing("uacme is missing; run `make bench`, which installs it")
            base = work / "uacme"
            base.mkdir()
            trust_for_children(ca_bundle, base)
            challenges, self.helpers = stack.enter_context(nginx_webroot(base / "nginx", http_port))
            key_args = (
                ["-t", "EC", "-b", "256"] if key == "ec-p256" else ["-t", "RSA", "-b", "2048"]
            )
            self.uacme = [
                "uacme", "-c", str(base / "conf"), "-a", directory,
                "-h", str(write_hook(base / "hook.sh", challenges)), *key_args,
            ]  # fmt: skip
        else:
            self.env.update(
                {
                    "CERTBROKER_DATA_DIR": str(work / "certbroker"),
                    "CERTBROKER_HTTP01_PORT": str(http_port),
                    "CERTBROKER_HTTP01_ADDRESS": "127.0.0.1",
                    "CERTBROKER_LOG_LEVEL": "warning",
                }
            )
            self.ca_bundle = ca_bundle

    def _call(self, argv: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run one call of the tool under GNU time, keeping the largest peak RSS seen: the
        tool's own (getrusage of the benchmark's children would count, for each, the
        forked benchmark process before it became the tool)."""
        report = self.work / "maxrss"
        proc = subprocess.run(
            [str(TIME), "-f", "%M", "-o", str(report), *argv], env=self.env,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.peak_kib = max(self.peak_kib, int(report.read_text().split()[-1]))
        return proc

    def _run(self, argv: list[str], what: str) -> str:
        proc = self._call(argv)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return f"{what}: exit {proc.returncode}: {' | '.join(tail)}"
        return ""

    def register(self, warm_up: str) -> str:
        """The account (and whatever the tool caches), before the timed part."""
        if self.kind == "certbot":
            return self._run(
                [str(CERTBOT), "register", "--non-interactive", "--agree-tos",
                 "--register-unsafely-without-email", f"--server={self.directory}", *self.dirs],
                "certbot register",
            )  # fmt: skip
        if self.kind == "uacme":
            error = self._run([*self.uacme, "-y", "new", "bench@example.com"], "uacme new")
            if error:
                return error
        if self.kind in ("cb-cli", "cb-batch"):
            error = self._run(
                [sys.executable, "-m", "certbroker", "account", "register",
                 "--directory", self.directory, "--email", "bench@example.com", "--agree-tos",
                 "--ca-bundle", str(self.ca_bundle), "--name", "bench"],
                "certbroker account register",
            )  # fmt: skip
            if error:
                return error
        return self.issue(warm_up)

    def issue(self, name: str) -> str:
        """'' when the certificate was issued, else what went wrong."""
        if self.kind == "certbot":
            key = (
                ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"]
                if self.key == "ec-p256"
                else ["--key-type", "rsa", "--rsa-key-size", "2048"]
            )
            return self._run(
                [str(CERTBOT), "certonly", "--standalone", "--non-interactive", "--agree-tos",
                 "--register-unsafely-without-email", f"--server={self.directory}",
                 "--preferred-challenges=http", f"--http-01-port={self.port}",
                 "--http-01-address=127.0.0.1", *key, *self.dirs, "-d", name],
                f"certbot {name}",
            )  # fmt: skip
        if self.kind == "lego":
            return self._run(
                ["lego", "--accept-tos", "--email=bench@example.com",
                 f"--server={self.directory}", f"--path={self.work / 'lego'}",
                 f"--key-type={'ec256' if self.key == 'ec-p256' else 'rsa2048'}",
                 f"--domains={name}", "--http", f"--http.port=127.0.0.1:{self.port}", "run"],
                f"lego {name}",
            )  # fmt: skip
        if self.kind == "uacme":  # exit 1 would be "still current, not reissued": a failure
            return self._run([*self.uacme, "issue", name], f"uacme {name}")
        return self._run(
            [sys.executable, "-m", "certbroker", "cert", "request", name, "--wait",
             "--key-type", self.key, "--account", "bench"],
            f"certbroker {name}",
        )  # fmt: skip

    def issue_all(self, names: list[str]) -> tuple[int, list[str]]:
        """cb-batch: every name by one `certbroker cert request --from FILE --wait`."""
        batch = self.work / "batch.txt"
        batch.write_text("".join(f"{name}\n" for name in names))
        proc = self._call(
            [sys.executable, "-m", "certbroker", "cert", "request", "--from", str(batch),
             "--wait", "--key-type", self.key, "--account", "bench"],
            timeout=TIMEOUT * 5,
        )  # fmt: skip
        valid = proc.stdout.count(" issued for ")
        if proc.returncode == 0 and valid == len(names):
            return valid, []
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return valid, [f"certbroker --from: exit {proc.returncode}: {' | '.join(tail)}"]


def run_peer(
    kind: str,
    work: Path,
    directory: str,
    ca_bundle: Path,
    http_port: int,
    key: str,
    names: list[str],
    timed: Callable[[list[int]], AbstractContextManager[None]],
) -> tuple[int, list[str], dict[str, float], int]:
    """(valid, failures, untimed setup seconds, peak RSS KiB of the tool's largest process):
    each name by one call of the tool. `timed(helpers)` times the calls, the CPU of the
    running `helpers` (uacme's nginx) counted with the tool's."""
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        peer = Peer(kind, work, directory, ca_bundle, http_port, key, stack)
        setup = {"set-up": time.perf_counter() - t0} if kind == "uacme" else {}
        t0 = time.perf_counter()
        error = peer.register(f"warm-up-{kind}.bench.example.com")
        setup["register + warm-up"] = time.perf_counter() - t0
        if error:
            return 0, [error], setup, 0
        valid, failures = 0, list[str]()
        with timed(peer.helpers):
            if kind == "cb-batch":
                valid, failures = peer.issue_all(names)
            else:
                for name in names:
                    error = peer.issue(name)
                    if error:
                        failures.append(error)
                    else:
                        valid += 1
    return valid, failures, setup, peer.peak_kib
