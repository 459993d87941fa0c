"""Several `cert request --wait` processes at once on one store, with no `serve`: an
automation tool running one per host, in parallel. Only one of them can hold the HTTP-01
port; every one's certificate must still be validated for real by Pebble."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import Cli


def test_four_waiting_requests_at_once_all_get_their_certificate(cli: Cli) -> None:
    """The first runs the responder; the other three start once it answers, so they rely
    on it, and it finishes its own certificate while theirs are still being validated."""
    cli.register()
    names = [f"parallel{i}.example.com" for i in range(4)]
    pipe = subprocess.PIPE
    command = [sys.executable, "-m", "certbroker", "cert", "request"]

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*command, name, "--wait"], env=cli.env, stdout=pipe, stderr=pipe, text=True
        )

    first = start(names[0])
    assert first.stderr is not None
    seen = []
    while not any("answering HTTP-01 on port" in line for line in seen):
        line = first.stderr.readline()
        assert line, f"the first process ended before it answered HTTP-01: {seen}"
        seen.append(line)
    procs = [first, *(start(name) for name in names[1:])]
    results = [(p, *p.communicate(timeout=240)) for p in procs]
    failed = [f"exit {p.returncode}: {err}" for p, _, err in results if p.returncode != 0]
    assert failed == [], "\n".join(failed)
    listed = cli.json("cert", "list")
    assert sorted(c["names"][0] for c in listed if c["status"] == "valid") == names
