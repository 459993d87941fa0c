"""Issue 5's targets in one table: every figure bench/*.py left in bench/results/*.json,
its ratio to each peer measured in the same run, and whether the target is met.

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
ORDER = ("issuance", "startup", "responder", "scheduler", "dns01")


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


def build() -> str | None:
    found = []
    for path in sorted(RESULTS.glob("*.json"), key=lambda p: (*ORDER, p.stem).index(p.stem)):
        data = json.loads(path.read_text())
        if not data.get("quick"):
            found.append(data)
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
