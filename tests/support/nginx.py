"""nginx (the Debian package) on loopback, for the tests and the benchmarks: started in
the foreground with a configuration and all its files under one directory, waited for, and
stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import wait_for_tcp
from tests.support.processes import log_tail, require_binary, spawn, terminate


def nginx_binary(what: str = "reverse-proxy") -> str:
    """nginx's path, or a RuntimeError naming the Debian package."""
    return require_binary("nginx", "nginx", what)


def http_preamble(work: Path) -> str:
    """What every `http {}` block here starts with: the temporary files under `work`."""
    return "\n".join(
        f"    {kind}_temp_path {work}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def user_directive() -> str:
    """As root, nginx's workers would switch to `nobody`, who cannot read the test's
    directories: keep them the current user's (only root can switch, so only then)."""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def run_nginx(binary: str, work: Path, port: int, conf: str) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with `conf` (written to `work`/nginx.conf) until the block ends, once it
    accepts connections on 127.0.0.1:`port` and its workers are up; yields its master
    process. Raises RuntimeError, with nginx's log, when it does not start."""
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    path = work / "nginx.conf"
    path.write_text(conf)
    argv = [
        binary, "-p", f"{work}/", "-c", str(path), "-e", str(work / "error.log"),
        "-g", f"daemon off; pid {work}/nginx.pid;",
    ]  # fmt: skip
    proc = spawn(argv, work / "nginx.log")
    try:
        try:
            wait_for_tcp("127.0.0.1", port, timeout=20)
        except TimeoutError:
            raise RuntimeError(
                f"nginx did not start:\n{log_tail(work / 'nginx.log')}\n"
                f"{log_tail(work / 'error.log')}"
            ) from None
        deadline = time.monotonic() + 10
        while not children_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc
    finally:
        terminate(proc)
