"""The tools users script instead of certbroker, run the way they script them: one process
per certificate, against the same Pebble as certbroker, in the same benchmark run.

* certbot (from PyPI, in .bench/certbot-venv): `certbot certonly --standalone -d NAME`;
* lego (Debian): `lego --domains NAME --http run`;
* cb-cli: certbroker scripted the same way, `certbroker cert request NAME --wait`.

Each has its account registered before the timed part (certbot `register`, lego and
certbroker with one warm-up certificate), so the figure is issuance alone. All answer
HTTP-01 themselves on Pebble's http_port; in always-valid mode Pebble does not look.
`scripts/ensure-bench-deps.sh` (run by `make bench`) installs the peers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CERTBOT = ROOT / ".bench" / "certbot-venv" / "bin" / "certbot"
PEERS = ("certbot", "lego", "cb-cli")
TIMEOUT = 120


class PeerMissing(RuntimeError):
    pass


def versions() -> dict[str, str]:
    found = {}
    for name, argv in (("certbot", [str(CERTBOT), "--version"]), ("lego", ["lego", "--version"])):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            found[name] = subprocess.run(
                argv, capture_output=True, text=True, check=True, timeout=60
            ).stdout.strip()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):  # lego says "dev"
        found["lego (Debian)"] = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "lego"], capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
    return found


def _run(argv: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"{what}: exit {proc.returncode}: {' | '.join(tail)}"
    return ""


class Peer:
    """One tool, set up in `work` against `directory`; `issue(name)` is one scripted call."""

    def __init__(
        self, kind: str, work: Path, directory: str, ca_bundle: Path, http_port: int, key: str
    ) -> None:
        self.kind = kind
        self.work = work
        self.directory = directory
        self.port = http_port
        self.key = key  # "ec-p256" or "rsa2048"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
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

    def register(self, warm_up: str) -> str:
        """The account (and whatever the tool caches), before the timed part."""
        if self.kind == "certbot":
            return _run(
                [str(CERTBOT), "register", "--non-interactive", "--agree-tos",
                 "--register-unsafely-without-email", f"--server={self.directory}", *self.dirs],
                self.env, "certbot register",
            )  # fmt: skip
        if self.kind == "cb-cli":
            error = _run(
                [sys.executable, "-m", "certbroker", "account", "register",
                 "--directory", self.directory, "--email", "bench@example.com", "--agree-tos",
                 "--ca-bundle", str(self.ca_bundle), "--name", "bench"],
                self.env, "certbroker account register",
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
            return _run(
                [str(CERTBOT), "certonly", "--standalone", "--non-interactive", "--agree-tos",
                 "--register-unsafely-without-email", f"--server={self.directory}",
                 "--preferred-challenges=http", f"--http-01-port={self.port}",
                 "--http-01-address=127.0.0.1", *key, *self.dirs, "-d", name],
                self.env, f"certbot {name}",
            )  # fmt: skip
        if self.kind == "lego":
            return _run(
                ["lego", "--accept-tos", "--email=bench@example.com",
                 f"--server={self.directory}", f"--path={self.work / 'lego'}",
                 f"--key-type={'ec256' if self.key == 'ec-p256' else 'rsa2048'}",
                 f"--domains={name}", "--http", f"--http.port=127.0.0.1:{self.port}", "run"],
                self.env, f"lego {name}",
            )  # fmt: skip
        return _run(
            [sys.executable, "-m", "certbroker", "cert", "request", name, "--wait",
             "--key-type", self.key, "--account", "bench"],
            self.env, f"certbroker {name}",
        )  # fmt: skip


def run_peer(
    kind: str,
    work: Path,
    directory: str,
    ca_bundle: Path,
    http_port: int,
    key: str,
    names: list[str],
    timed: Callable[[], AbstractContextManager[None]],
) -> tuple[int, list[str], dict[str, float]]:
    """(valid, failures, untimed setup seconds): each name by one call of the tool."""
    import time

    peer = Peer(kind, work, directory, ca_bundle, http_port, key)
    t0 = time.perf_counter()
    error = peer.register(f"warm-up-{kind}.bench.example.com")
    setup = {"register + warm-up": time.perf_counter() - t0}
    if error:
        return 0, [error], setup
    valid, failures = 0, []
    with timed():
        for name in names:
            error = peer.issue(name)
            if error:
                failures.append(error)
            else:
                valid += 1
    return valid, failures, setup
