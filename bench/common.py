"""What every benchmark does with its figures: its own marked section of
docs/benchmarks.md, and bench/results/<name>.json for bench/summary.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"


def write_section(start: str, end: str, body: str, heading: str) -> None:
    """Put `body` between the markers `start` and `end` of docs/benchmarks.md; when the
    markers are not there yet, append `heading` and the marked section at the end."""
    text = DOC.read_text()
    section = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = f"{text.rstrip()}\n\n{heading}\n\n{section}\n"
    DOC.write_text(text)


def write_results(bench: str, figures: list[dict[str, Any]], quick: bool) -> Path:
    """bench/results/<bench>.json, the shape bench/summary.py reads; a quick run goes to
    <bench>-quick.json, so it never replaces the figures of a full one."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{bench}{'-quick' if quick else ''}.json"
    data = {"bench": bench, "date": dt.date.today().isoformat(), "quick": quick}
    out.write_text(json.dumps({**data, "figures": figures}, indent=2) + "\n")
    return out
