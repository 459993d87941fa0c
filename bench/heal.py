"""Time to heal: certificates that failed together because nothing answered HTTP-01,
from the responder coming back to every one of them valid, with no command run.

Against real Pebble on loopback, validating over HTTP-01: N certificates are queued and a
`certbroker serve` whose responder listens on a port the CA does not ask (a restart, a
firewall change) fails them all ("connection refused"); it is stopped, and a `serve` on
the right port is started. The figure is the time from that start until all N are valid:
the first retry comes about a minute after each failure (domain/retry.py), and the
failed-validation cap (3 per name and hour) keeps the retries within the CA's limits.

`make bench` runs it; `--write` replaces this script's section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pebble import start_pebble  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

from bench.common import write_results, write_section  # noqa: E402

START, END = "<!-- heal:start -->", "<!-- heal:end -->"


def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "certbroker", *args], env=env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout


def statuses(env: dict[str, str]) -> list[str]:
    return [c["status"] for c in json.loads(run(env, "cert", "list", "--json"))]


def serve(env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "certbroker", "serve"], env={**env, **extra},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def until(what: str, done: object, timeout: float) -> float:
    started = time.monotonic()
    while not done():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)
    return time.monotonic() - started


def measure(n: int) -> tuple[float, float]:
    """(seconds until all failed, seconds from the responder's return to all valid)."""
    with tempfile.TemporaryDirectory(prefix="cb-bench-heal-") as tmp:
        work = Path(tmp)
        port = free_port()
        pebble = start_pebble(work / "pebble", http_port=port, nonce_reject=0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            PYTHONPYCACHEPREFIX=str(work / "pycache"), CERTBROKER_DATA_DIR=str(work / "cb"),
            CERTBROKER_HTTP01_PORT=str(port), CERTBROKER_HTTP01_ADDRESS="127.0.0.1",
            CERTBROKER_LOG_LEVEL="warning", CERTBROKER_SCHEDULER_INTERVAL="0.5",
        )  # fmt: skip
        try:
            run(env, "account", "register", "--directory", pebble.directory_url,
                "--email", "bench@example.com", "--agree-tos",
                "--ca-bundle", str(pebble.ca_bundle))  # fmt: skip
            batch = work / "names.txt"
            batch.write_text("".join(f"heal{i}.example.com\n" for i in range(n)))
            run(env, "cert", "request", "--from", str(batch))
            astray = serve(env, CERTBROKER_HTTP01_PORT=str(free_port()))
            failing = until("every certificate failed",
                            lambda: statuses(env) == ["failed"] * n, 300)  # fmt: skip
            astray.send_signal(signal.SIGTERM)
            astray.wait(60)
            back = serve(env)
            try:
                healed = until("every certificate valid",
                               lambda: statuses(env) == ["valid"] * n, 900)  # fmt: skip
            finally:
                back.send_signal(signal.SIGTERM)
                back.wait(60)
        finally:
            pebble.stop()
    return failing, healed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 certificates")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    n = 10 if args.quick else 100
    failing, healed = measure(n)
    section = (
        f"### {dt.date.today().isoformat()}, N={n}\n\n"
        f"{os.cpu_count()} cores, Python {platform.python_version()}; Pebble validating "
        "over HTTP-01 on loopback.\n\n"
        "| figure | seconds |\n|---|---:|\n"
        f"| all {n} failed (nothing answered HTTP-01) | {failing:.1f} |\n"
        f"| responder back -> all {n} valid, no command run | {healed:.1f} |\n\n"
        "- the first retry of each comes 54-60 s after its failure (1 minute, up to a "
        "tenth shorter at random), so about a minute is the floor of this figure\n"
    )
    print(section)
    figures = [{"figure": f"time to heal {n} certificates that failed together",
                "unit": "s", "certbroker": round(healed, 1)}]  # fmt: skip
    write_results("heal", figures, args.quick)
    if args.write:
        write_section(START, END, section, "## Time to heal (`bench/heal.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
