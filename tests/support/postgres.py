"""A throwaway PostgreSQL for the tests: Debian's binaries (`/usr/lib/postgresql/<v>/bin`),
`initdb` in a temporary directory as an unprivileged user (`nobody` when the tests run as
root: PostgreSQL refuses to run as root), on a free loopback port, with durability off
(a test cluster dies with its directory). Stopped by PID. `CERTBROKER_TEST_DATABASE_URL`
names a server to use instead.

A cluster of a test's own can also crash (`crash`: PostgreSQL's immediate shutdown) and
start again on the same data directory and port (`restart`), as a database server does
when its host's supervisor restarts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

URL_ENV = "CERTBROKER_TEST_DATABASE_URL"
# What the server's processes see of the environment: nothing of the tests'.
_ENV = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin directory, if one is installed."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


@dataclass
class PostgresServer:
    """A running cluster (or the server CERTBROKER_TEST_DATABASE_URL names)."""

    admin_url: str  # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None  # removed when it stops
    command: list[str] = field(default_factory=list)  # how `restart` starts it again

    def new_database(self, prefix: str = "cb") -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(_libpq(self.admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, not input
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}"

    def crash(self) -> None:
        """PostgreSQL's immediate shutdown (SIGQUIT to the postmaster): every connection
        is cut at once and nothing is checkpointed, as when the server crashes; the next
        start recovers from the write-ahead log. Returns once the port is closed."""
        if self.process is None:
            raise RuntimeError("a server the tests did not start cannot be crashed")
        os.kill(self.process.pid, signal.SIGQUIT)
        self.process.wait(30)

    def restart(self) -> None:
        """Start the crashed (or stopped) cluster again: the same data directory and
        port; returns once it accepts connections (after its crash recovery)."""
        if self.workdir is None or not self.command:
            raise RuntimeError("a server the tests did not start cannot be restarted")
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the cluster is still running")
        self.process = _launch(self.command, self.workdir)
        _wait_ready(self)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _libpq(url: str) -> str:
    """SQLAlchemy's URL as libpq takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _as_unprivileged(workdir: Path) -> tuple[Callable[[], None] | None, int | None]:
    """When root: a preexec function that becomes `nobody`, and its uid (the data
    directory must be its)."""
    if os.geteuid() != 0:
        return None, None
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    for path in (workdir, *workdir.rglob("*")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return drop, nobody.pw_uid


def start_postgres(
    settings: Mapping[str, str] | None = None, parent: Path | None = None, *, own: bool = False
) -> PostgresServer:
    """A new cluster in a directory of its own (in memory, /dev/shm, where there is one:
    nothing it writes must last), answering on 127.0.0.1; or the configured server. The
    directory is removed when it stops. Not under pytest's temporary directories: those
    are root's alone, and the cluster runs as `nobody`. `settings` override the server's
    (`-c name=value`): durability is off unless they turn it on. `parent`: where the
    directory goes instead (a small disk of the test's own; traversable by `nobody`).
    `own`: a cluster of the caller's even when URL_ENV names a server (a test that crashes
    it or fills its disk)."""
    if os.environ.get(URL_ENV) and not own:
        return PostgresServer(os.environ[URL_ENV])
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError(
            f"PostgreSQL is not installed (Debian: apt-get install postgresql-15); or set {URL_ENV}"
        )
    shm = Path("/dev/shm")
    place = parent or (shm if shm.is_dir() else None)
    workdir = Path(tempfile.mkdtemp(prefix="certbroker-pg-", dir=place))
    workdir.chmod(0o755)
    data, sockets = workdir / "data", workdir / "sockets"
    sockets.mkdir(exist_ok=True)
    (workdir / "postgres.log").touch()
    drop, _uid = _as_unprivileged(workdir)
    done = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        cwd=workdir, env=_ENV, preexec_fn=drop, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
    port = free_port()
    options = {
        "listen_addresses": "127.0.0.1", "unix_socket_directories": str(sockets),
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "max_connections": "200", "shared_buffers": "64MB", **(settings or {}),
    }  # fmt: skip
    command = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
    for name, value in options.items():
        command += ["-c", f"{name}={value}"]
    server = PostgresServer(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        _launch(command, workdir),
        workdir,
        command,
    )
    _wait_ready(server)
    return server


def _launch(command: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    """The postmaster, as `nobody` when the tests run as root, logging to the workdir."""
    drop, _uid = _as_unprivileged(workdir)
    with (workdir / "postgres.log").open("ab") as log:
        return subprocess.Popen(
            command, cwd=workdir, env=_ENV, preexec_fn=drop, stdout=log, stderr=subprocess.STDOUT
        )


def _wait_ready(server: PostgresServer) -> None:
    """Until the server accepts connections; stopped, and an error, when it cannot."""
    import psycopg

    assert server.process is not None and server.workdir is not None
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(_libpq(server.admin_url), connect_timeout=2):
                return
        except psycopg.OperationalError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            log = (server.workdir / "postgres.log").read_text()[-2000:]
            server.stop()
            raise RuntimeError(f"PostgreSQL did not start: {log}")
        time.sleep(0.1)


@contextlib.contextmanager
def shared_postgres(run_id: str | None) -> Iterator[PostgresServer]:
    """One cluster for every xdist worker of a test run (`run_id`: xdist's
    PYTEST_XDIST_TESTRUNUID, the same in each worker): the first worker that needs it
    starts it, the last one done stops it, counted in a small file under a lock. Without
    a run ID (no xdist), or with CERTBROKER_TEST_DATABASE_URL, a server of its own."""
    if not run_id or os.environ.get(URL_ENV):
        server = start_postgres()
        try:
            yield server
        finally:
            server.stop()
        return
    state = Path(tempfile.gettempdir()) / f"certbroker-pg-{run_id}.json"
    with _locked(state):
        if state.exists():
            info = json.loads(state.read_text())
            info["users"] += 1
        else:
            started = start_postgres()
            assert started.process is not None
            info = {"url": started.admin_url, "pid": started.process.pid,
                    "workdir": str(started.workdir), "users": 1}  # fmt: skip
        state.write_text(json.dumps(info))
    try:
        yield PostgresServer(info["url"])
    finally:
        with _locked(state):
            info = json.loads(state.read_text())
            info["users"] -= 1
            if info["users"] > 0:
                state.write_text(json.dumps(info))
            else:
                _stop_by_pid(int(info["pid"]))
                shutil.rmtree(info["workdir"], ignore_errors=True)
                state.unlink()
                state.with_suffix(".lock").unlink()  # under its lock, the last user


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    with open(state.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stop_by_pid(pid: int) -> None:
    """PostgreSQL's fast shutdown for a server another process may have started: wait
    until it is gone (or only a zombie its parent has yet to reap), else kill it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return
        if state == "Z":
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
