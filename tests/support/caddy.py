"""step-ca's ACME server as Caddy runs it (Debian package ``caddy``, directive
``acme_server``): a second real CA beside Pebble, with its own quirks.

Facts about Caddy 2.6 (Debian 2.6.2) this harness relies on:

* ``acme_server`` serves ``/acme/local/directory`` with the ``pki`` app's ``local`` CA;
  its root is written to ``<storage>/pki/authorities/local/root.crt`` at start-up, and the
  listener's own certificate (``tls internal``) is signed by the same CA.
* Its ACME database lives in memory: a restart forgets accounts and orders.
* It validates HTTP-01 on port 80 of the name, resolved through the system's resolver:
  there is no setting for another port or resolver in 2.6. So Caddy runs in a mount
  namespace of its own (``unshare -m``, root only) whose ``/etc/hosts`` maps the test
  names (``NAMES``) to ``RESPONDER_ADDRESS``, a loopback address of their own, where the
  tests' certbroker answers HTTP-01 on port 80. The machine's ``/etc/hosts`` is untouched.

The tests that use it share one xdist group, so one Caddy serves the whole run and one
process at a time answers on that address.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .ports import free_port
from .processes import LOG_TAIL_LINES, log_tail, require_binary, spawn, terminate

RESPONDER_ADDRESS = "127.0.80.1"
ZONE = "step.test"
# Every name a test may ask this CA for; each test takes its own.
NAMES = (ZONE, *(f"{label}.{ZONE}" for label in "abcdefgh"))
STARTUP_TIMEOUT = 20.0

CADDYFILE = """\
{{
	admin off
	skip_install_trust
	storage file_system {storage}
	auto_https disable_redirects
	http_port {http_port}
	https_port {port}
	pki {{
		ca local {{
			name "certbroker test step-ca"
		}}
	}}
}}
https://127.0.0.1:{port} {{
	tls internal
	acme_server
}}
"""


@dataclass
class CaddyServer:
    """A running Caddy whose ACME server is at `directory_url`."""

    directory_url: str
    ca_bundle: Path  # its CA's root: verifies the listener and the certificates it issues
    workdir: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        terminate(self.process)


def start_caddy(workdir: Path) -> CaddyServer:
    """Caddy with `acme_server` on a free loopback port, validating HTTP-01 for `NAMES` at
    `RESPONDER_ADDRESS`:80. Root only (the mount namespace, port 80)."""
    caddy = require_binary("caddy", "caddy", "step-ca (Caddy acme_server)")
    unshare = require_binary("unshare", "util-linux", "step-ca (Caddy acme_server)")
    if os.geteuid() != 0:
        raise RuntimeError(
            "the step-ca tests run Caddy in a mount namespace of its own and answer HTTP-01 "
            "on port 80, which needs root: run `make test` as root (CI does)"
        )
    hosts = workdir / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n::1 localhost\n" + f"{RESPONDER_ADDRESS} {' '.join(NAMES)}\n"
    )
    port = free_port()
    storage = workdir / "data"
    config = workdir / "Caddyfile"
    config.write_text(CADDYFILE.format(storage=storage, port=port, http_port=free_port()))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "XDG_DATA_HOME": str(workdir / "xdg-data"),
        "XDG_CONFIG_HOME": str(workdir / "xdg-config"),
    }
    # `exec` twice: the PID the test holds is Caddy's, so stopping it by PID stops Caddy.
    script = 'mount --bind "$1" /etc/hosts && exec "$2" run --config "$3" --adapter caddyfile'
    log_path = workdir / "caddy.log"
    process = spawn(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "caddy",
         str(hosts), caddy, str(config)],
        log_path,
        env,
    )  # fmt: skip
    server = CaddyServer(
        directory_url=f"https://127.0.0.1:{port}/acme/local/directory",
        ca_bundle=storage / "pki" / "authorities" / "local" / "root.crt",
        workdir=workdir,
        process=process,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"caddy exited ({process.returncode}) while starting; the last "
                f"{LOG_TAIL_LINES} lines of {log_path}:\n{log_tail(log_path)}"
            )
        try:
            if server.ca_bundle.exists():
                answer = requests.get(server.directory_url, verify=str(server.ca_bundle), timeout=2)
                if answer.ok and "newOrder" in answer.json():
                    return server
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"caddy's ACME directory did not answer within {STARTUP_TIMEOUT:.0f} s; the "
                f"last {LOG_TAIL_LINES} lines of {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.1)
