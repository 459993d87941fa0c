"""A full disk is a clear error, and nothing is lost (issue 23).

Each test mounts a small tmpfs (we run as root), fills it with a filler file and looks at
what certbroker does: one clear line instead of tracebacks, the store consistent and
every certificate and key in it intact, `serve` waiting and going on by itself once the
filler is gone; and an export, an install or a key file that cannot be written leaves
the file that was there whole and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from certbroker.agent.state import AgentState, Held
from certbroker.crypto.keys import key_matches_certificate, load_private_key
from certbroker.deploy.files import InstallFailed, install_files
from certbroker.domain.targets import FileSpec
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.serve import api_url, wait_until

PEM_FILES = {"cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"}


# -- a small disk, and filling it ---------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` for the test, unmounted whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise RuntimeError(
            f"the full-disk tests mount a small tmpfs, which needs root (run `make test` as "
            f"root, as CI does): mount said {mounted.stderr.strip()!r}"
        )
    try:
        yield path
    finally:
        for _ in range(100):  # a process that just ended may hold it a moment longer
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "--lazy", str(path)], check=False)
        with contextlib.suppress(OSError):
            path.rmdir()  # the mount point, empty again


def fill(disk: Path, leave: int = 0) -> Path:
    """A filler file that takes every free byte of `disk`, then gives `leave` bytes back
    (tmpfs counts whole pages)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12):
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    if not leave:
        assert os.statvfs(disk).f_bavail == 0
    return filler


def one_line_error(proc: subprocess.CompletedProcess[str], progress: bool = False) -> str:
    """Exit 1 (nothing about the request is wrong) and one line, never a traceback; with
    `progress`, after the lines of progress a `--wait` prints."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "sqlalche.me" not in proc.stderr, proc.stderr
    if progress:
        assert proc.stderr.count("error: ") == 1, proc.stderr
        return proc.stderr.splitlines()[-1]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


# -- serve, its output read as it comes ---------------------------------------------------------


class Serve:
    """`certbroker serve` whose output is read by a thread as it comes: a pipe nobody reads
    fills up (a traceback a second does so in a minute) and stops serve's logging, and
    with it every thread that logs."""

    def __init__(self, cli: Cli, **env: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "certbroker", "serve"],
            env={**cli.env, "CERTBROKER_WORKER_PROCESSES": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("certbroker serving")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def saying(self, words: str) -> list[str]:
        return [line for line in list(self.lines) if words in line]

    def wait_for(self, words: str, timeout: float = 90) -> None:
        wait_until(f"serve to say {words!r}", lambda: self.saying(words), serve=self.process,
                   timeout=timeout)  # fmt: skip

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
        return self.log


def api_get(cli: Cli, token: str, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(api_url(cli) + path, headers=headers, timeout=30, trust_env=False)


def new_token(cli: Cli, name: str) -> str:
    return cli("token", "create", "--name", name, "--role", "viewer").stdout.strip().split()[-1]


def stopped(process: subprocess.Popen[str]) -> bool:
    """The process stopped itself (SIGSTOP: state T)."""
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def request_stopped_at(cli: Cli, name: str, step: str) -> subprocess.Popen[str]:
    """`cert request NAME --wait` that stops itself (SIGSTOP) right after `step` is
    recorded: an order this CLI holds, in flight, when the disk fills."""
    process = subprocess.Popen(
        [sys.executable, "-m", "certbroker", "cert", "request", name, "--wait"],
        env={**cli.env, "CERTBROKER_FAULT_STOP_AT": step},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(f"the request for {name} to stop after {step}", lambda: stopped(process),
                   timeout=90)  # fmt: skip
    except BaseException:
        process.kill()
        raise
    return process


def resume(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def export_pem(cli: Cli, cert_id: int, out: Path) -> dict[str, bytes]:
    cli("cert", "export", str(cert_id), "--format", "pem", "--out", str(out))
    return {name: (out / name).read_bytes() for name in PEM_FILES}


def assert_issued_once(cli: Cli, cert_id: int, order_url: str) -> None:
    """One order, the one in flight when the disk filled, resumed to one certificate."""
    shown = cli.json("cert", "show", str(cert_id))
    assert shown["status"] == "valid", shown
    (attempt,) = shown["attempts"]
    assert attempt["state"] == "valid" and attempt["order_url"] == order_url, attempt
    assert not shown.get("history"), shown["history"]


def the_full_episode(
    cli: Cli,
    serve: Serve,
    tmp_path: Path,
    fill_the_disk: Callable[[], Path],
    where: str,
    *,
    every_insert_refused: bool = True,
) -> None:
    """What both stores must do: certificates 1 and 2 are issued and stored, certificate
    3 is in flight (ordered at the CA, held by a CLI that stopped) when `fill_the_disk`
    runs. Then: one line in serve's log, the alarm and /readyz, reads and exports without
    a key go on, writes fail in one line each; the filler goes, and certificate 3 is
    issued from the order in flight, once, with everything before still there.
    `every_insert_refused`: False where a small row may still find room in a page."""
    token = new_token(cli, "watch")  # never used yet: its first use is a write
    for name in ("full1.example.com", "full2.example.com"):
        cli("cert", "request", name)
    wait_until("certificates 1 and 2", lambda: [c["status"] for c in cli.json("cert", "list")]
               == ["valid", "valid"], serve=serve.process, timeout=120)  # fmt: skip
    before = {i: export_pem(cli, i, tmp_path / f"before-{i}") for i in (1, 2)}
    in_flight = request_stopped_at(cli, "full3.example.com", "ordered")
    try:
        (attempt,) = cli.json("cert", "show", "3")["attempts"]
        assert attempt["state"] == "ordered" and attempt["order_url"]
        filler = fill_the_disk()
    except BaseException:
        in_flight.kill()  # never left stopped
        raise
    try:
        # The CLI holding the order goes on, and its next step is refused: one line.
        refused = one_line_error(resume(in_flight), progress=True)
        assert refused.startswith("error: "), refused
        assert f"the store {where}" in refused and "is full" in refused, refused
        # So is a new request, and nothing of it is stored.
        refused = one_line_error(cli("cert", "request", "full4.example.com", check=False))
        assert "is full" in refused and "nothing stored before is lost" in refused
        assert [c["id"] for c in cli.json("cert", "list")] == [1, 2, 3]

        # serve takes the order over (its holder is gone), is refused, and says so once.
        serve.wait_for("is full (")
        (line,) = serve.saying("is full (")
        assert f"the store {where} is full" in line and "ERROR certbroker.store" in line
        alarms = api_get(cli, token, "/api/v1/alarms")
        assert alarms.status_code == 200, alarms.text
        (alarm,) = [a for a in alarms.json() if a["kind"] == "store-full"]
        assert alarm["certificate_id"] is None and where in alarm["last_error"], alarm
        ready = api_get(cli, token, "/readyz")
        assert ready.status_code == 503, ready.text
        assert any(p.startswith("disk full") for p in ready.json()["problems"]), ready.text

        # Reads go on: the certificates, and an export without the key.
        out = tmp_path / "during.pem"
        cli("cert", "export", "1", "--format", "fullchain", "--out", str(out))
        assert out.read_bytes() == before[1]["fullchain.pem"]
        if every_insert_refused:
            # The key leaves only once its export is in the audit log: not now, one line.
            no = tmp_path / "no"
            refused = one_line_error(
                cli("cert", "export", "2", "--format", "pem", "--out", str(no), check=False)
            )
            assert "was not exported" in refused and "audit log" in refused, refused
            assert "is full" in refused and not no.exists()
        time.sleep(3)  # the workers try again meanwhile (every second): still one line
        assert len(serve.saying("is full (")) == 1, serve.log
    finally:
        filler.unlink()

    wait_until("certificate 3", lambda: cli.json("cert", "show", "3")["status"] == "valid",
               serve=serve.process, timeout=180)  # fmt: skip
    assert_issued_once(cli, 3, attempt["order_url"])
    serve.wait_for("takes writes again after")
    alarms = api_get(cli, token, "/api/v1/alarms").json()
    assert [a for a in alarms if a["kind"] == "store-full"] == [], serve.log
    assert api_get(cli, token, "/readyz").status_code == 200
    (event,) = [e for e in cli.json("events") if e["kind"] == "store-full"]
    assert where in event["message"] and "nothing stored before was lost" in event["message"]

    # Everything stored before the disk filled is there, byte for byte.
    for cert_id, files in before.items():
        assert export_pem(cli, cert_id, tmp_path / f"after-{cert_id}") == files
    files = export_pem(cli, 3, tmp_path / "after-3")
    leaf = x509.load_pem_x509_certificate(files["cert.pem"])
    assert key_matches_certificate(load_private_key(files["privkey.pem"]), leaf)
    assert [c["id"] for c in cli.json("cert", "list")] == [1, 2, 3]


# -- the store -----------------------------------------------------------------------------------


def test_serve_on_sqlite_waits_out_a_full_disk_and_loses_nothing(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        cli = make_cli(disk / "data", pebble)
        cli.register()
        database = disk / "data" / "certbroker.db"
        serve = Serve(cli)

        def fill_the_disk() -> Path:
            # Writes go to the write-ahead log; emptied, any write needs a new page.
            with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0
            return fill(disk)

        try:
            the_full_episode(cli, serve, tmp_path, fill_the_disk, str(database))
        finally:
            log = serve.stop()
        assert serve.process.returncode == 0, log
        assert "Traceback" not in log, log
        assert len([line for line in log.splitlines() if "is full (" in line]) == 1, log
        with contextlib.closing(sqlite3.connect(database)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_serve_on_postgresql_waits_out_a_full_disk_and_loses_nothing(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    import psycopg

    # Not under pytest's directories (root's alone): the cluster runs as `nobody`.
    mount = Path(f"/tmp/certbroker-full-{os.getpid()}-{time.monotonic_ns()}")
    with tmpfs(mount, "96m") as disk:
        server: PostgresServer = start_postgres(parent=disk, own=True)
        try:
            url = server.new_database()
            cli = make_cli(tmp_path / "data", pebble)
            cli.env["CERTBROKER_DATABASE_URL"] = url
            cli("db", "upgrade")
            cli.register()
            libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
            # PostgreSQL takes an update into the room its page keeps: serve's worker takes
            # the order in flight, and what it holds when an insert is refused waits for
            # its lease to run out (as after an outage). A short one keeps the test short.
            serve = Serve(cli, CERTBROKER_LEASE_SECONDS="15")

            def fill_the_disk() -> Path:
                with psycopg.connect(libpq, autocommit=True) as conn:
                    # A busy store's pages are full; a new one's are nearly empty, and
                    # PostgreSQL puts many rows in them without a new page. Packed to a
                    # tenth (fillfactor 10, VACUUM FULL), an insert needs a new page, as
                    # on a store long in use; an update still finds room.
                    tables = conn.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    ).fetchall()
                    for (table,) in tables:  # names from the catalog, not input
                        conn.execute(f'ALTER TABLE "{table}" SET (fillfactor = 10)')
                        # Its own tables only: the catalogs' rewritten, every new
                        # connection would write PostgreSQL's cache file, and fail.
                        conn.execute(f'VACUUM FULL "{table}"')
                    # The write-ahead log goes on in a fresh segment, allocated in full:
                    # WAL PostgreSQL cannot write stops the server (an outage, not this).
                    conn.execute("SELECT pg_switch_wal()")
                    conn.execute("CHECKPOINT")
                return fill(disk)

            try:
                where = url.rsplit("@", 1)[1]
                the_full_episode(
                    cli, serve, tmp_path, fill_the_disk, where, every_insert_refused=False
                )
            finally:
                log = serve.stop()
            assert serve.process.returncode == 0, log
            assert "Traceback" not in log, log
            assert len([line for line in log.splitlines() if "is full (" in line]) == 1, log
        finally:
            server.stop()


def test_a_new_store_on_a_full_disk_is_one_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "data").mkdir()
        fill(disk)
        cli = make_cli(disk / "data", None)
        refused = one_line_error(cli("cert", "list", check=False))
        assert f"the store {disk / 'data' / 'certbroker.db'} is full" in refused, refused
        # The store elsewhere (made beforehand): the master key cannot be written.
        store = {"CERTBROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
        make_cli(tmp_path / "elsewhere", None)("cert", "list", env=store)
        cli.env.update(store)
        refused = one_line_error(cli("cert", "list", check=False))
        assert f"cannot write the key file {disk / 'data' / 'master.key'}" in refused
        assert "no space left" in refused
        # No key file, no temporary one; the database SQLite opened is as empty as it was.
        assert sorted(p.name for p in (disk / "data").iterdir()) == ["certbroker.db"]
        assert (disk / "data" / "certbroker.db").stat().st_size == 0


# -- files: exports, installs, the agent's state -------------------------------------------------


@pytest.fixture
def two_issued(cli: Cli) -> Cli:
    cli.register()
    cli("cert", "request", "exp1.example.com", "--wait")
    cli("cert", "request", "exp2.example.com", "www.exp2.example.com", "--wait")
    return cli


def test_an_export_to_a_full_disk_leaves_the_files_there_whole(
    two_issued: Cli, tmp_path: Path
) -> None:
    cli = two_issued
    with tmpfs(tmp_path / "disk", "1m") as disk:
        live = disk / "live"
        before = export_pem(cli, 1, live)
        combined = disk / "haproxy.pem"
        cli("cert", "export", "1", "--format", "combined", "--out", str(combined))
        combined_before = combined.read_bytes()
        fill(disk, leave=8192)  # room for some of the files, not for all of them

        refused = one_line_error(
            cli("cert", "export", "2", "--format", "pem", "--out", str(live), check=False)
        )
        assert f"cannot write {live}/" in refused and "no space left" in refused, refused
        assert {p.name for p in live.iterdir()} == PEM_FILES  # no temporary file is left
        assert {n: (live / n).read_bytes() for n in PEM_FILES} == before
        assert (live / "privkey.pem").stat().st_mode & 0o777 == 0o600

        fill(disk)  # no room at all: the one file cannot be written
        again = ("cert", "export", "2", "--format", "combined", "--out", str(combined))
        refused = one_line_error(cli(*again, check=False))
        assert f"cannot write {combined}" in refused and "no space left" in refused
        assert combined.read_bytes() == combined_before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "haproxy.pem", "live"]


def test_an_install_on_a_full_disk_is_rolled_back_and_names_the_file(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        old = {disk / "cert.pem": b"old certificate\n", disk / "key.pem": b"old key\n"}
        for path, data in old.items():
            path.write_bytes(data)
        fill(disk, leave=4096)  # the first new file fits, the second does not
        new = [FileSpec(disk / "cert.pem", b"c" * 3000, 0o644),
               FileSpec(disk / "key.pem", b"k" * 6000, 0o600)]  # fmt: skip
        with pytest.raises(InstallFailed) as failed:
            install_files(new, reload=None)
        assert f"({disk / 'key.pem'})" in str(failed.value), failed.value
        assert "No space left on device" in str(failed.value)
        assert failed.value.result.rolled_back
        for path, data in old.items():
            assert path.read_bytes() == data
        assert not [p for p in disk.iterdir() if p.name.endswith((".tmp", ".restore"))]


def test_the_agents_state_file_is_never_cut_short(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        state = AgentState(disk / "state.json", {"gw.example.com": Held(1, "0a")})
        state.save()
        saved = state.path.read_bytes()
        fill(disk, leave=4096)  # part of the next state fits, not all of it
        for n in range(200):  # about 20 KB of JSON
            state.certificates[f"gw{n}.example.com"] = Held(n, f"{n:x}", waiting={"n": n})
        with pytest.raises(OSError) as refused:
            state.save()
        assert refused.value.errno == errno.ENOSPC
        assert state.path.read_bytes() == saved
        assert json.loads(saved) and AgentState.load(state.path).of("gw.example.com").serial
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "state.json"]
