"""DNS-01 benchmark: the propagation check's cost, and wildcards issued concurrently.

Runs against real parts on loopback: BIND 9 (RFC 2136 updates signed with TSIG) and
Pebble whose VA reads the TXT records from that BIND. Two figures (issue 4):

1. "records written -> challenge answered": for N single-name certificates issued one
   after the other, the time from the last TXT record written to the challenge being
   answered, i.e. the propagation check against the zone's authoritative server (the
   RFC 2136 account's own server). Target: under 1 s when the record is visible at once.
   certbot's dns plugins sleep a fixed `--dns-*-propagation-seconds` (60 s for rfc2136)
   here instead.
2. 20 wildcard certificates (`*.wN.example.com`) requested at once and issued by 20
   threads through one RFC 2136 account: wall time, certificates per second, and that
   no TXT record is left behind.

`make bench` runs it after the issuance benchmarks; `--write` replaces this script's
section of docs/benchmarks.md with today's figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dns_servers import BindServer, start_bind  # noqa: E402
from tests.support.pebble import PebbleServer, start_pebble  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

from bench.common import write_results, write_section  # noqa: E402

if TYPE_CHECKING:
    from certbroker.wiring import Broker

KEY = "certbroker-bench"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- dns01:start -->", "<!-- dns01:end -->"


def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    full_env.update({"CERTBROKER_DATA_DIR": str(data_dir), **(env or {})})
    subprocess.run(
        [sys.executable, "-m", "certbroker", *args], env=full_env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip


def set_up(data_dir: Path, pebble: PebbleServer, bind: BindServer) -> None:
    cli(
        data_dir, "account", "register", "--directory", pebble.directory_url,
        "--email", "bench@example.com", "--agree-tos", "--ca-bundle", str(pebble.ca_bundle),
        "--name", "main",
    )  # fmt: skip
    cli(
        data_dir, "dns", "add", "bind", "--provider", "rfc2136", "--server", bind.address,
        "--tsig-key-name", KEY, "--zone", "example.com",
        env={"CERTBROKER_DNS_TSIG_SECRET": bind.keys[KEY][1]},
    )  # fmt: skip


def broker_for(data_dir: Path) -> Broker:
    from certbroker.config import load_settings
    from certbroker.wiring import build

    return build(load_settings(environ={"CERTBROKER_DATA_DIR": str(data_dir)}))


def written_to_answered(broker: Broker, names: list[str]) -> list[float]:
    """Per certificate: seconds from the last TXT record written to the challenge answered."""
    from certbroker.domain.models import ChallengeType
    from certbroker.services.issuance import Outcome
    from certbroker.services.leases import make_owner
    from certbroker.services.requests import CertificateRequest

    spans = []
    for name in names:
        marks: dict[str, float] = {}

        def progress(message: str, marks: dict[str, float] = marks) -> None:
            now = time.monotonic()
            if "TXT record" in message and "written" in message:
                marks["written"] = now
            elif "challenge answered" in message:
                marks.setdefault("answered", now)

        owner = make_owner("bench")
        cert, _ = broker.requests.request(
            CertificateRequest(names=[name], challenge=ChallengeType.DNS_01), lease_owner=owner
        )
        result = broker.issuance.wait_for(cert.id, owner, progress)
        if result.outcome is not Outcome.ISSUED:
            raise SystemExit(f"{name} failed: {result.message}")
        spans.append(marks["answered"] - marks["written"])
    return spans


def wildcards_at_once(broker: Broker, count: int, bind: BindServer) -> tuple[float, int]:
    from certbroker.domain.models import ChallengeType
    from certbroker.services.issuance import Outcome
    from certbroker.services.leases import make_owner
    from certbroker.services.requests import CertificateRequest

    ids = []
    for i in range(count):
        cert, _ = broker.requests.request(
            CertificateRequest(names=[f"*.w{i}.example.com"], challenge=ChallengeType.DNS_01)
        )
        ids.append(cert.id)
    barrier = threading.Barrier(count)

    def issue(cert_id: int) -> bool:
        barrier.wait()
        result = broker.issuance.wait_for(cert_id, make_owner("bench"))
        return bool(result.outcome is Outcome.ISSUED)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        issued = sum(pool.map(issue, ids))
    took = time.monotonic() - started
    left = sum(len(bind.txt(f"_acme-challenge.w{i}.example.com")) for i in range(count))
    if left:
        raise SystemExit(f"{left} TXT record(s) left behind")
    return took, issued


def report(spans: list[float], took: float, issued: int, count: int) -> str:
    today = dt.date.today().isoformat()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ok = "met" if max(spans) < 1.0 else "MISSED"
    return "\n".join(
        [
            f"### DNS-01, {today} (`bench/dns01.py`)",
            "",
            f"{os.cpu_count()} cores, {mem:.1f} GiB, Python {platform.python_version()}, "
            f"certbroker {version('certbroker')}, dnspython {version('dnspython')}, "
            "BIND 9 and Pebble from Debian, all on loopback.",
            "",
            "| figure | value | target |",
            "|---|---|---|",
            f"| records written -> challenge answered, median of {len(spans)} | "
            f"{statistics.median(spans) * 1000:.0f} ms | < 1 s |",
            f"| the same, slowest | {max(spans) * 1000:.0f} ms | < 1 s ({ok}) |",
            f"| {count} wildcard certificates at once, one RFC 2136 account | "
            f"{issued}/{count} in {took:.1f} s = {issued / took:.1f}/s | all issued, no record "
            "left |",
            "",
            "certbot's rfc2136 plugin waits a fixed 60 s (`--dns-rfc2136-propagation-seconds`) "
            "at the same point.",
        ]
    )


def write_json(spans: list[float], took: float, issued: int, count: int, quick: bool) -> None:
    """bench/results/dns01.json for bench/summary.py."""
    figures = [
        {
            "figure": "DNS-01: records written -> challenge answered, slowest",
            "unit": "s",
            "certbroker": max(spans),
            "peers": {"certbot rfc2136 (fixed sleep)": 60.0},
            "target": {"max": 1.0},
        },
        {
            "figure": f"DNS-01: {count} wildcard certificates at once, one RFC 2136 account",
            "unit": "certs/s",
            "certbroker": issued / took,
        },
    ]
    write_results("dns01", figures, quick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 certificates and 5 wildcards")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    sequential, wildcards = (3, 5) if args.quick else (10, 20)
    with tempfile.TemporaryDirectory(prefix="cb-bench-dns-") as tmp:
        work = Path(tmp)
        with start_bind(work / "bind", {"example.com": []}, {KEY: ["example.com"]}) as bind:
            pebble = start_pebble(work / "pebble", http_port=free_port(), dns_server=bind.address)
            try:
                data_dir = work / "data"
                set_up(data_dir, pebble, bind)
                broker = broker_for(data_dir)
                names = [f"seq{i}.example.com" for i in range(sequential)]
                spans = written_to_answered(broker, names)
                took, issued = wildcards_at_once(broker, wildcards, bind)
            finally:
                pebble.stop()
    section = report(spans, took, issued, wildcards)
    print(section)
    write_json(spans, took, issued, wildcards, args.quick)
    if args.write:
        write_section(START, END, section, "## DNS-01 (`bench/dns01.py`)")
    return 0 if issued == wildcards and max(spans) < 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
