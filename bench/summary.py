"""Issue 5's and issue 11's targets in one table: every figure bench/*.py left in
bench/results/*.json, its ratio to each peer measured in the same run, and whether the
target is met.

Issue 11 (a cheaper CLI) adds: `certbroker cert list` over 10 certificates under 0.35 s
and `certbroker --help` under 0.3 s (both from bench/startup.py, which names them), and one
`certbroker cert request NAME --wait` process (bench/issuance.py's cb-cli, one process per
certificate) costing less CPU than one certbot process, in always-valid mode with EC keys.
bench/issuance.py records cb-cli and certbot as peers of its "CPU per certificate" figure;
`derived` makes cb-cli's own row of them.

Issue 13 (REST API and console) adds, with 100,000 certificates in the store: the first
page of `GET /api/v1/certificates` and a deep page (keyset cursor) under 50 ms at the
median, and the console's dashboard under 200 ms (bench/api.py names them as targets;
its requests/s under wrk is a figure without one).

Issue 14 (device CSRs) adds: 500 device CSRs posted at once over REST reaching at least
70 % of the in-process floor's certificates per second (bench/devices.py, the floor
being bench/issuance.py's cb-pool, measured in the same run), and the broker's memory
while 500 websockets wait (figures without a target).

Issue 15 (gateway agents) adds, with 1,000 agents connected to one broker: its memory per
connected agent under 50 KiB, and under 2 s from a renewed certificate stored to it
received by all 1,000 (bench/agents.py names both as targets).

`make bench` runs it last; it prints the table and (unless --no-write, or when only quick
runs left results) puts it at the top of docs/benchmarks.md, between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- summary:start -->", "<!-- summary:end -->"
ORDER = (
    "issuance",
    "startup",
    "responder",
    "scheduler",
    "scheduler-postgres",
    "dns01",
    "heal",
    "api",
    "devices",
    "agents",
    "nodes",
)
CPU_FIGURE = ": CPU per certificate"  # bench/issuance.py: "issuance, MODE, KEY: CPU per ..."
CB_CLI_TARGET = ("always-valid", "ec-p256")  # where issue 11 sets cb-cli <= certbot


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}"


def _ratio(value: float) -> str:
    return f"{value:.0%}" if value < 2 else f"{value:.1f}x"


def rows(data: dict[str, Any]) -> list[str]:
    out = []
    for figure in data["figures"]:
        unit = figure.get("unit", "")
        ours = float(figure["certbroker"])
        peers: dict[str, float] = figure.get("peers", {})
        compared = ", ".join(
            f"{name} {_number(value, unit)} ({_ratio(ours / value) if value else '-'})"
            for name, value in peers.items()
        )
        targets = list(figure.get("targets", []))
        if "target" in figure:
            targets.append(figure["target"])
        verdicts = []
        for target in targets:
            peer = target.get("peer")
            theirs = peers.get(peer) if peer else None
            if "min_ratio" in target and theirs:
                ratio, goal = ours / theirs, float(target["min_ratio"])
                met = ratio >= goal
                verdicts.append(f"vs {peer} >= {_ratio(goal)}: {'met' if met else 'MISSED'}")
            elif "max_ratio" in target and theirs:
                ratio, goal = ours / theirs, float(target["max_ratio"])
                met = ratio < goal
                verdicts.append(f"vs {peer} < {_ratio(goal)}: {'met' if met else 'MISSED'}")
            elif "max" in target:
                met = ours < float(target["max"])
                verdicts.append(f"< {_number(target['max'], unit)}: {'met' if met else 'MISSED'}")
            elif peer:
                verdicts.append(f"vs {peer}: not measured in this run")
        out.append(
            f"| {data['bench']} | {figure['figure']} | {_number(ours, unit)} | "
            f"{compared or '-'} | {'; '.join(verdicts) or '-'} | {data.get('date', '?')} |"
        )
    return out


def derived(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with, after each CPU-per-certificate figure of bench/issuance.py that has both
    peers, the row of cb-cli (`cert request NAME --wait`, one process per certificate)
    against certbot; issue 11's target (less CPU than certbot) where it sets it."""
    if data.get("bench") != "issuance":
        return data
    figures: list[dict[str, Any]] = []
    for figure in data["figures"]:
        figures.append(figure)
        name: str = figure["figure"]
        peers = figure.get("peers", {})
        if not name.endswith(CPU_FIGURE) or "cb-cli" not in peers or "certbot" not in peers:
            continue
        where = name.removesuffix(CPU_FIGURE)  # "issuance, MODE, KEY"
        _, mode, key = (part.strip() for part in where.split(","))
        row: dict[str, Any] = {
            "figure": f"{where}: cb-cli CPU per certificate (`cert request NAME --wait`)",
            "unit": figure.get("unit", "ms"),
            "certbroker": peers["cb-cli"],
            "peers": {"certbot": peers["certbot"]},
        }
        if (mode, key) == CB_CLI_TARGET:
            row["targets"] = [{"peer": "certbot", "max_ratio": 1.0}]
        figures.append(row)
    return data | {"figures": figures}


def build() -> str | None:
    found = []
    for path in sorted(RESULTS.glob("*.json"), key=lambda p: (*ORDER, p.stem).index(p.stem)):
        data = json.loads(path.read_text())
        if not data.get("quick"):
            found.append(derived(data))
    if not found:
        return None
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        START,
        "## Targets at a glance (`bench/summary.py`)",
        "",
        f"From the latest full run of each benchmark on this machine ({os.cpu_count()} cores, "
        f"{mem:.1f} GiB, Python {platform.python_version()}); each ratio is certbroker's "
        "figure over the peer's, both measured in the same run. Details and versions in the "
        "sections below.",
        "",
        "| bench | figure | certbroker | peers (ratio) | targets | date |",
        "|---|---|---:|---|---|---|",
    ]
    for data in found:
        lines += rows(data)
    lines.append(END)
    return "\n".join(lines)


def write_doc(section: str) -> None:
    text = DOC.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:  # after the title and the first paragraph
        title, sep, rest = text.partition("\n\n")
        first, sep2, rest2 = rest.partition("\n\n")
        text = f"{title}{sep}{first}{sep2}{section}\n\n{rest2}"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    args = parser.parse_args()
    section = build()
    if section is None:
        print("no full benchmark results in bench/results yet (quick runs are not summed up)")
        return 0
    print(section)
    if not args.no_write:
        write_doc(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
