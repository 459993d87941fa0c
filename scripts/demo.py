"""`make demo`: a whole issuance against a local Pebble, no public domain needed.

Starts Pebble (Debian package) with pebble-challtestsrv resolving every name to
127.0.0.1, then runs the real `certbroker` commands a user would type, in a throwaway
data directory, and shows what each one prints.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.pebble import start_pebble  # noqa: E402
from tests.support.ports import free_port  # noqa: E402


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="certbroker-demo-"))
    pebble = start_pebble(work / "pebble", http_port=free_port())
    env = {
        **os.environ,
        "CERTBROKER_DATA_DIR": str(work / "data"),
        "CERTBROKER_HTTP01_PORT": str(pebble.http_port),
        "CERTBROKER_HTTP01_ADDRESS": "127.0.0.1",
    }
    certbroker = [sys.executable, "-m", "certbroker"]
    steps = [
        [
            "account",
            "register",
            "--directory",
            pebble.directory_url,
            "--email",
            "ops@example.com",
            "--agree-tos",
            "--ca-bundle",
            str(pebble.ca_bundle),
            "--name",
            "pebble",
        ],
        ["cert", "request", "demo.example.com", "www.demo.example.com", "--wait"],
        ["cert", "list"],
        ["cert", "show", "1"],
        ["cert", "export", "1", "--format", "combined", "--out", str(work / "haproxy.pem")],
        ["cert", "revoke", "1", "--reason", "superseded"],
        ["cert", "list"],
    ]
    print(f"Pebble is running at {pebble.directory_url}; data in {work / 'data'}\n")
    try:
        for args in steps:
            print(f"$ certbroker {shlex.join(args)}", flush=True)
            result = subprocess.run([*certbroker, *args], env=env, check=False)
            print(flush=True)
            if result.returncode != 0:
                print(f"demo step failed with exit code {result.returncode}", file=sys.stderr)
                return result.returncode
    finally:
        pebble.stop()
    print(f"Done. Everything the demo wrote is in {work}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
