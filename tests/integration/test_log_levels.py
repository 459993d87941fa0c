"""Per-component log levels: from the configuration, and changed while `serve` runs."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import Cli
from tests.support.serve import start_serve


def test_levels_come_from_defaults_and_configuration(offline_cli: Cli) -> None:
    shown = offline_cli.json(
        "log-level", "--json", env={"CERTBROKER_LOG_LEVELS": "scheduler=warning, acme=debug"}
    )
    assert shown["scheduler"] == {"level": "warning", "source": "config"}
    assert shown["acme"] == {"level": "debug", "source": "config"}
    assert shown["workers"] == {"level": "info", "source": "default"}
    assert (
        "scheduler   warning  (config)"
        in offline_cli("log-level", env={"CERTBROKER_LOG_LEVELS": "scheduler=warning"}).stdout
    )


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["nosuch", "debug"], "unknown component 'nosuch'"),
        (["acme", "loud"], "unknown level 'loud'"),
        (["acme"], "give a LEVEL for acme"),
        (["acme", "debug", "--reset"], "--reset takes a COMPONENT and no LEVEL"),
    ],
)
def test_bad_log_level_commands_are_refused(offline_cli: Cli, args: list[str], hint: str) -> None:
    proc = offline_cli("log-level", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert hint in proc.stderr


def test_bad_configured_levels_are_refused(offline_cli: Cli) -> None:
    proc = offline_cli("cert", "list", check=False, env={"CERTBROKER_LOG_LEVELS": "acme=loud"})
    assert proc.returncode == 2
    assert "env CERTBROKER_LOG_LEVELS" in proc.stderr and "'acme=loud'" in proc.stderr


class _Output:
    """Collects a process's output lines as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, what: str, predicate: Callable[[list[str]], bool]) -> int:
        deadline = time.monotonic() + 60
        while not predicate(self.lines):
            assert time.monotonic() < deadline, f"no {what} in:\n{''.join(self.lines)}"
            time.sleep(0.1)
        return len(self.lines)


def _issued(cli: Cli, name: str) -> None:
    cli("cert", "request", name)
    deadline = time.monotonic() + 60
    while {c["names"][0]: c["status"] for c in cli.json("cert", "list")}[name] != "valid":
        assert time.monotonic() < deadline, f"{name} was not issued"
        time.sleep(0.3)


def test_a_running_serve_follows_log_level_changes(cli: Cli) -> None:
    cli.register()
    serve = start_serve(cli, CERTBROKER_WORKER_PROCESSES="2")
    out = _Output(serve)

    def acme_debug(lines: list[str]) -> list[str]:
        return [line for line in lines if " DEBUG acme." in line]

    try:
        out.wait_for("start", lambda lines: any("certbroker serving" in x for x in lines))
        _issued(cli, "quiet1.example.com")
        assert acme_debug(out.lines) == []  # info by default: no ACME exchange

        cli("log-level", "acme", "debug")
        mark = out.wait_for(  # both processes apply it
            "the change", lambda lines: sum("log levels now: acme=debug" in x for x in lines) == 2
        )
        _issued(cli, "loud.example.com")
        exchange = acme_debug(out.lines[mark:])
        assert exchange, "no ACME exchange at debug level"
        assert any("loud.example.com" in line for line in out.lines[mark:])
        assert cli.json("log-level", "--json")["acme"] == {"level": "debug", "source": "runtime"}

        cli("log-level", "acme", "--reset")
        mark = out.wait_for(
            "the reset",
            lambda lines: sum("log levels now: as configured" in x for x in lines) == 2,
        )
        _issued(cli, "quiet2.example.com")
        assert acme_debug(out.lines[mark:]) == []
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    text = "".join(out.lines)
    assert "PRIVATE KEY" not in text  # the exchange carries public keys and signatures only
