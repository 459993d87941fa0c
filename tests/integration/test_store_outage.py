"""The database goes away (issue 23, part 3): whatever the moment, one clear line, never
a traceback. Before `serve` is up, an unreachable database ends it with exit 1 and one
line naming host, port and the driver's reason (never the password), for its supervisor
to start it again; once it serves, an outage is waited out: `/healthz` answers,
`/readyz` says 503 "database unreachable", and the work goes on when the database is
back, no order lost or made twice. A command exits 1 with one line.

PostgreSQL "crashes" here: its immediate shutdown (SIGQUIT to the postmaster) cuts every
connection at once. That would break every other test on the run's shared cluster, so
this module runs one of its own, with synchronous commits: a commit the broker was told
of must survive the crash, as on a real server (the shared cluster does not wait for its
write-ahead log, which loses the last commits in a crash).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.nodes import Cluster, start_cluster
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.serve import start_serve

PASSWORD = "pw-never-printed-7f3a"  # the cluster trusts every local login: any password works
CERTIFICATES = 40
OUTAGE = 6.0  # seconds the database stays down mid-run


@pytest.fixture(scope="module")
def crashable() -> Iterator[PostgresServer]:
    """A cluster of this module's own, to crash and start again; stopped by PID."""
    server = start_postgres({"synchronous_commit": "on"}, own=True)  # never URL_ENV's
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def valid_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    """Pebble that validates every challenge (what is under test is who orders what) and
    lists all of an account's orders on one page."""
    with start_pebble(
        tmp_path_factory.mktemp("pebble"), http_port=free_port(), always_valid=True,
        env={"PEBBLE_WFE_ORDERS_PER_PAGE": str(CERTIFICATES * 10)},
    ) as pebble:  # fmt: skip
        yield pebble


@pytest.fixture
def cluster(
    tmp_path: Path, crashable: PostgresServer, valid_pebble: PebbleServer
) -> Iterator[Cluster]:
    """A store on the crashable cluster; its CLI and nodes reach it by a URL with a
    password. The cluster is running again after each test, whatever happened."""
    for found in start_cluster(tmp_path, crashable, valid_pebble):  # one; its nodes stopped after
        found.cli.env["CERTBROKER_DATABASE_URL"] = found.url.replace(
            "postgres@", f"postgres:{PASSWORD}@", 1
        )
        try:
            yield found
        finally:
            if crashable.process is None or crashable.process.poll() is not None:
                crashable.restart()


def _port(cluster: Cluster) -> int:
    return int(cluster.url.rpartition(":")[2].partition("/")[0])


def _one_clear_line(output: str, cluster: Cluster) -> str:
    """The output is one line naming the database's host and port and the reason (the
    server refused the connection), with no traceback and no password."""
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"cannot reach the database at 127.0.0.1:{_port(cluster)} (" in lines[0], output
    assert "refused" in lines[0].lower(), output
    return lines[0]


def test_serve_started_while_the_database_is_down_exits_1_with_one_line(
    cluster: Cluster, crashable: PostgresServer
) -> None:
    crashable.crash()
    serve = start_serve(cluster.cli, CERTBROKER_WORKER_PROCESSES="2")
    out = _ended(serve)
    assert serve.returncode == 1, out
    _one_clear_line(out, cluster)


def _ended(serve: subprocess.Popen[str]) -> str:
    """What serve printed until it ended by itself (killed when it does not)."""
    try:
        out, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    return out


def _paused(process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Until the process has stopped itself (SIGSTOP, state T)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert process.poll() is None, "serve ended before its pause"
        assert time.monotonic() < deadline, "serve never paused (CERTBROKER_FAULT_STOP_AT)"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "point",
    [
        "store-opened",  # the store just opened: serve reads its settings next
        "processes-starting",  # the API answers; the worker processes open the store next
    ],
)
def test_a_database_that_crashes_while_serve_starts_ends_it_with_one_line(
    cluster: Cluster, crashable: PostgresServer, point: str
) -> None:
    """Seen before: a 140-line traceback when PostgreSQL crashed as the nodes started.
    serve stops itself at `point` (the crash tests' fault hook), the database crashes,
    then serve goes on from there."""
    serve = start_serve(
        cluster.cli,
        CERTBROKER_WORKER_PROCESSES="2",
        CERTBROKER_FAULT_STOP_AT=point,
        CERTBROKER_ADMIN_PASSWORD="correct horse battery",  # no first-start line
    )
    try:
        _paused(serve)
        crashable.crash()
        serve.send_signal(signal.SIGCONT)
        out = _ended(serve)
    finally:
        if serve.poll() is None:  # it never paused: not left behind
            serve.kill()
            serve.wait()
    assert serve.returncode == 1, out
    _one_clear_line(out, cluster)


def test_a_command_against_a_stopped_database_exits_1_with_one_line(
    cluster: Cluster, crashable: PostgresServer
) -> None:
    crashable.crash()
    for command in (("cert", "list"), ("db", "status")):
        done = cluster.cli(*command, check=False, timeout=60)
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert _one_clear_line(done.stderr, cluster).startswith("error: ")


def test_two_nodes_wait_out_a_database_crash_and_issue_each_certificate_once(
    cluster: Cluster, crashable: PostgresServer, tmp_path: Path
) -> None:
    """40 certificates requested through two nodes: PostgreSQL crashes while the first
    half is being issued and stays down for OUTAGE seconds, while the second half is
    requested. Meanwhile both nodes live, answer /healthz, say on /readyz what is wrong
    and answer requests 503, which the client tries again. Then both go on: every
    certificate issued from one order, the CA asked for exactly one order each, and no
    traceback in either node's log."""
    for n in range(2):
        cluster.start_node(n, tmp_path, CERTBROKER_WORKERS="2")  # a run long enough to crash in
    cluster.wait_up()
    half = CERTIFICATES // 2

    def valid() -> int:
        return int(cluster.sql("SELECT count(*) FROM certificates WHERE status = 'valid'")[0][0])

    def request(n: int) -> None:
        cluster.request(n, [0, 1], "outage")

    unready: set[int] = set()
    with ThreadPoolExecutor(4) as pool:
        first = pool.map(request, range(half))
        deadline = time.monotonic() + 120
        while True:  # mid-run: some issued, some under way (at the last look)
            before, leased = cluster.sql(
                "SELECT (SELECT count(*) FROM certificates WHERE status = 'valid'), "
                "(SELECT count(*) FROM orders WHERE lease_owner IS NOT NULL)"
            )[0]
            if before >= 3 and leased > 0:
                break
            assert before < half, "every order ended before the crash could come"
            assert time.monotonic() < deadline, "the nodes issue nothing"
            time.sleep(0.01)
        crashable.crash()
        try:
            posted = pool.map(request, range(half, CERTIFICATES))  # while it is down
            down_until = time.monotonic() + OUTAGE
            while time.monotonic() < down_until:
                for n, api in enumerate(cluster.apis):
                    assert cluster.nodes[n].poll() is None, cluster.logs[n].read_text()[-3000:]
                    health = httpx.get(api + "/healthz", trust_env=False, timeout=10)
                    assert health.status_code == 200
                    ready = httpx.get(api + "/readyz", trust_env=False, timeout=10)
                    problems = " ".join(ready.json()["problems"])
                    if ready.status_code == 503 and "database unreachable" in problems:
                        assert f"127.0.0.1:{_port(cluster)}" in problems
                        assert PASSWORD not in problems
                        unready.add(n)
                time.sleep(0.5)
            # A request meanwhile: 503, saying why and when to try again.
            answer = httpx.post(
                cluster.apis[0] + "/api/v1/certificates",
                json={"names": ["while-down.example.com"]},
                headers={"Authorization": f"Bearer {cluster.token}"},
                trust_env=False,
                timeout=30,
            )
            assert answer.status_code == 503, answer.text
            assert answer.json()["type"].endswith("/store-unavailable")
            assert "Retry-After" in answer.headers and PASSWORD not in answer.text
        finally:
            crashable.restart()
        list(first)
        list(posted)  # each answered 202 in the end, tried again through the outage
    assert unready == {0, 1}

    deadline = time.monotonic() + 120
    while valid() < CERTIFICATES:
        assert time.monotonic() < deadline, (
            f"{valid()} of {CERTIFICATES} valid; the nodes' logs:\n"
            + "\n".join(log.read_text()[-3000:] for log in cluster.logs)
        )
        time.sleep(0.5)
    cluster.wait_up()  # both ready again

    # Each certificate once, from one order, valid; nothing left leased.
    assert cluster.sql("SELECT count(*) FROM certificates")[0][0] == CERTIFICATES
    per_cert = cluster.sql(
        "SELECT certificate_id, count(*), min(state), max(state) FROM orders "
        "GROUP BY certificate_id"
    )
    assert len(per_cert) == CERTIFICATES
    assert {(row[1], row[2], row[3]) for row in per_cert} == {(1, "valid", "valid")}
    assert cluster.sql("SELECT count(*) FROM orders WHERE lease_owner IS NOT NULL")[0][0] == 0
    # At the CA: exactly one order per certificate, the ones the store names.
    urls = {str(row[0]).rpartition("/")[2] for row in cluster.sql("SELECT order_url FROM orders")}
    at_ca = {url.rpartition("/")[2] for url in cluster.ca_orders(tmp_path)}
    assert at_ca == urls and len(at_ca) == CERTIFICATES
    # The outage is one warning per node, not a traceback per look at the store.
    for log in cluster.logs:
        text = log.read_text()
        assert "Traceback" not in text, text[-5000:]
        assert PASSWORD not in text
        warned = [line for line in text.splitlines() if "cannot reach the database" in line]
        assert 1 <= len(warned) <= 2, "\n".join(warned)
        assert "the database answers again" in text, text[-3000:]
