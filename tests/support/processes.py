"""Start, watch and stop the real servers the tests run (Pebble, BIND, PowerDNS): each logs
to a file next to its work directory and is stopped by PID."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 40
SBIN_DIRS = "/usr/sbin:/sbin"  # daemons live there, often not on a non-root PATH


def require_binary(name: str, package: str, what: str) -> str:
    """The binary's path, found on PATH or in /usr/sbin and /sbin, else a message naming
    the Debian package that has it."""
    path = shutil.which(name) or shutil.which(name, path=SBIN_DIRS)
    if path is None:
        raise RuntimeError(
            f"`{name}` is not on PATH or in {SBIN_DIRS}. certbroker's {what} tests run the real "
            f"server from the Debian package '{package}'; run `make test`, which installs it "
            f"(scripts/ensure-test-deps.sh), or `sudo apt-get install {package}`."
        )
    return path


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "<empty log>"


def spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in the log's directory, stdout and stderr appended to the log."""
    with log_path.open("ab") as log:
        log.write(
            f"--- {dt.datetime.now(dt.UTC).isoformat()} starting: {' '.join(argv)}\n".encode()
        )
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=log_path.parent,
        )


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process by PID, wait up to STOP_TIMEOUT seconds, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
