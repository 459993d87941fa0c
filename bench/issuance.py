"""Issuance throughput: certbroker against an in-process `acme` floor, on a local Pebble.

Run with `make bench` (N=50, both key types, median of 3; the scripted tools, which take
minutes for 50 certificates one after another, once) or `make bench QUICK=1` (N=3, EC
only, one run). Every scenario runs in a child process of its own, with a fresh Pebble,
so peak memory (ru_maxrss) and CPU time belong to that scenario alone. Each scenario runs
in two Pebble modes:

* always-valid: PEBBLE_VA_ALWAYS_VALID=1, Pebble accepts every challenge unseen;
* http-01: Pebble's VA really fetches /.well-known/acme-challenge/<token> from the
  client's responder on the Pebble http_port.

Scenarios:

* floor-1 / floor-8: the `acme` library used directly (ClientV2 + ClientNetwork), EC
  P-256 keys, one name per certificate, 20 ms order polling; one thread, or 8 threads
  with a client each. badNonce is retried by the loop (Pebble keeps its default 5 %
  nonce rejection), and for http-01 a tiny in-memory ThreadingHTTPServer serves tokens.
* cb-seq: certbroker with its SQLite store: IssuanceService.request + wait_for, one
  certificate after the other in this process.
* cb-renew (always-valid only): the same pools renew N certificates: first issued
  (untimed), then all made due; timed from the scheduler's tick until every one is
  renewed (the old one in the history).
* cb-pool: certbroker's worker pools as `serve` runs them: worker_processes processes
  (default one per core), each a WorkerPool of 8 workers. All N requested first (queued,
  no lease owner) and the worker processes started, both timed separately; then the
  pools run until every certificate left "pending".
* certbot, lego, uacme, cb-cli: one process of the tool per certificate, as users script
  it (bench/peers.py; uacme's hook writes the token into a webroot nginx serves).
* cb-batch: certbroker's CLI with all N at once, `cert request --from FILE --wait`: one
  process, 8 worker threads. Issue 5's
  targets: cb-pool at least 100x certbot's and 15x lego's certificates per second, and less
  CPU per certificate than certbot; uacme is compared without a target.

Figures: certificates per second (wall clock of the timed part), CPU seconds per
certificate of the benchmark process (getrusage RUSAGE_SELF: all threads, user + sys; plus
its worker processes, from /proc/<pid>/stat) and
of Pebble (+ pebble-challtestsrv, from /proc/<pid>/stat, as they are still running), and
peak RSS (ru_maxrss) of the benchmark process. Results go to docs/benchmarks.md unless
--no-write.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import queue
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support.pebble: the real Pebble harness

from tests.support.pebble import PebbleServer, start_pebble  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

from bench.common import write_results  # noqa: E402
from bench.peers import PEERS, SCRIPTED, TOOLS, run_peer  # noqa: E402
from bench.peers import versions as peer_versions  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
MODES = ("always-valid", "http-01")
SCENARIOS = ("floor-1", "floor-8", "cb-seq", "cb-pool", "cb-renew", *PEERS)
ONLY_ALWAYS_VALID = ("cb-renew",)  # issue 3 sets its target in always-valid mode
KEY_TYPES = ("ec-p256", "rsa2048")
ONLY_EC = ("cb-renew", "floor-1", "cb-seq")  # the other scenarios run with both key types
N_RENEW = 200  # issue 5: renewal of 200 due certificates (--quick: 20)
# Issue 5's targets, as ratios measured in the same run.
VS_CERTBOT = 100.0  # cb-pool certs/s at least 100x certbot's scripted throughput
VS_LEGO = 15.0  # ... and 15x lego's
THREADS = 8
WORKERS = 8
POLL = 0.02  # the floor's order polling interval
BAD_NONCE_RETRIES = 12  # as certbroker's CA adapter
TARGET = 0.70  # cb-pool / floor-8
QUIET = 0.3  # CPU cores busy with other processes that still count as a quiet machine
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
T = TypeVar("T")


@dataclass
class Result:
    mode: str
    scenario: str
    n: int
    key_type: str = "ec-p256"
    valid: int = 0
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0  # benchmark process, timed part, user + sys
    cpu_sys: float = 0.0  # of which in the kernel
    pebble_cpu: float = 0.0  # pebble + pebble-challtestsrv, timed part
    others: float = 0.0  # CPU cores busy with other processes during the timed part
    listen_overflows: int = 0  # TcpExt ListenOverflows during the timed part (whole host)
    maxrss_kib: int = 0  # peak RSS, summed over the benchmark's processes
    processes: int = 1  # processes doing the work (cb-pool: `serve`'s worker_processes)
    pebble_hwm_kib: int = 0
    setup: dict[str, float] = field(default_factory=dict)  # untimed phases, seconds

    @property
    def rate(self) -> float:
        return self.valid / self.wall if self.wall else 0.0


# -- measuring ---------------------------------------------------------------------------


def _self_cpu() -> tuple[float, float]:
    """(user + sys, sys) of this process and of its children that ended (the peers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
        own.ru_stime + kids.ru_stime,
    )


def _listen_overflows() -> int:
    """Connections the kernel dropped because a listen backlog was full (whole host)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/net/netstat").read_text().splitlines()
        header, values = next(
            (h.split(), v.split())
            for h, v in itertools.pairwise(lines)
            if h.startswith("TcpExt:") and v.startswith("TcpExt:")
        )
        return int(values[header.index("ListenOverflows")])
    return 0


def _system_busy() -> float:
    """CPU seconds all processes on this machine spent busy so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int | None) -> float:
    """user + sys seconds of a running process (its own threads; it has no children)."""
    return 0.0 if pid is None else _procs_cpu([pid])[0]


def _procs_cpu(pids: Iterable[int]) -> tuple[float, float]:
    """(user + sys, sys) seconds of running processes."""
    total = system = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            system += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return total, system


def _proc_hwm_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _pebble_pids(pebble: PebbleServer) -> list[int | None]:
    helper = pebble._challtestsrv
    return [pebble.pid, helper.pid if helper is not None else None]


@contextlib.contextmanager
def timed(result: Result, pebble: PebbleServer, helpers: Iterable[int] = ()) -> Iterator[None]:
    """Time the block; `helpers` are our worker processes, whose CPU counts as ours."""
    pids = _pebble_pids(pebble)
    (cpu0, sys0), pcpu0, busy0 = _self_cpu(), sum(map(_proc_cpu, pids)), _system_busy()
    helpers = list(helpers)
    hcpu0, hsys0 = _procs_cpu(helpers)
    overflows0 = _listen_overflows()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        result.wall = time.perf_counter() - t0
        cpu1, sys1 = _self_cpu()
        hcpu1, hsys1 = _procs_cpu(helpers)
        result.cpu = cpu1 - cpu0 + hcpu1 - hcpu0
        result.cpu_sys = sys1 - sys0 + hsys1 - hsys0
        result.pebble_cpu = sum(map(_proc_cpu, pids)) - pcpu0
        others = _system_busy() - busy0 - result.cpu - result.pebble_cpu
        result.others = max(0.0, others) / result.wall if result.wall else 0.0
        result.listen_overflows = _listen_overflows() - overflows0


# -- the floor: the acme library directly ----------------------------------------------------


class TokenServer(ThreadingHTTPServer):
    """A minimal HTTP-01 responder over a dict, for the floor."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: when Pebble's VA opens more connections
    # at once, the kernel drops SYNs and the VA retries after 1 s.
    request_queue_size = 128

    def __init__(self, port: int) -> None:
        self.tokens: dict[str, str] = {}
        super().__init__(("127.0.0.1", port), _TokenHandler)


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        token = self.path.rsplit("/", 1)[-1]
        value = self.server.tokens.get(token)
        body = value.encode() if value is not None else b"not found\n"
        self.send_response(200 if value is not None else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Floor:
    """One ACME account; a ClientV2 per thread (ClientNetwork is not thread-safe)."""

    def __init__(
        self, pebble: PebbleServer, tokens: dict[str, str] | None, key_type: str = "ec-p256"
    ) -> None:
        from acme import client, messages
        from cryptography.hazmat.primitives.asymmetric import ec
        from josepy import ES256, JWKEC

        self.pebble = pebble
        self.tokens = tokens
        self.key_type = key_type
        self.jwk = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = self._net(None)
        self.directory = client.ClientV2.get_directory(pebble.directory_url, net)
        acme = client.ClientV2(self.directory, net)
        reg = messages.NewRegistration.from_data(
            email="floor@example.com", terms_of_service_agreed=True
        )
        self.account = retry_bad_nonce(lambda: acme.new_account(reg))
        self._alg = ES256
        self._local = threading.local()

    def _net(self, account: Any) -> Any:
        from acme import client
        from josepy import ES256

        return client.ClientNetwork(
            key=self.jwk,
            account=account,
            alg=ES256,
            verify_ssl=str(self.pebble.ca_bundle),
            user_agent="certbroker-bench-floor",
        )

    def client(self) -> Any:
        from acme import client

        acme = getattr(self._local, "acme", None)
        if acme is None:
            acme = client.ClientV2(self.directory, self._net(self.account))
            self._local.acme = acme
        return acme

    def issue(self, name: str) -> bool:
        from acme import challenges, messages
        from acme.crypto_util import make_csr
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        acme = self.client()
        from cryptography.hazmat.primitives.asymmetric import rsa

        key: Any = (
            ec.generate_private_key(ec.SECP256R1())
            if self.key_type == "ec-p256"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        csr_pem = make_csr(key_pem, [name])
        orderr = retry_bad_nonce(lambda: acme.new_order(csr_pem))  # + each authorization
        tokens = []
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            challb = next(
                c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)
            )
            response, validation = challb.response_and_validation(self.jwk)
            if self.tokens is not None:
                token = challb.chall.encode("token")
                self.tokens[token] = validation
                tokens.append(token)
            retry_bad_nonce(lambda c=challb, r=response: acme.answer_challenge(c, r))

        def order() -> Any:
            resp = retry_bad_nonce(
                lambda: acme.net.post(orderr.uri, None, new_nonce_url=self.directory["newNonce"])
            )
            return messages.Order.from_json(resp.json())

        try:
            body = order()
            while body.status == messages.STATUS_PENDING:
                time.sleep(POLL)
                body = order()
            if body.status == messages.STATUS_READY:
                body = retry_bad_nonce(lambda: acme.begin_finalization(orderr)).body
            while body.status == messages.STATUS_PROCESSING:
                time.sleep(POLL)
                body = order()
        finally:
            if self.tokens is not None:
                for token in tokens:
                    self.tokens.pop(token, None)
        if body.status != messages.STATUS_VALID or not body.certificate:
            raise RuntimeError(f"{name}: order ended {body.status}: {body.error}")
        fullchain = retry_bad_nonce(
            lambda: acme.net.post(body.certificate, None, new_nonce_url=self.directory["newNonce"])
        ).text
        leaf = x509.load_pem_x509_certificate(fullchain.encode())
        return bool(leaf.public_key() == key.public_key())


def retry_bad_nonce(fn: Callable[[], T]) -> T:
    """Retry on badNonce like certbroker does (the library alone retries once)."""
    from acme import messages

    for attempt in range(BAD_NONCE_RETRIES):
        try:
            return fn()
        except messages.Error as err:
            if err.code != "badNonce" or attempt + 1 == BAD_NONCE_RETRIES:
                raise
    raise AssertionError("unreachable")


def run_floor(result: Result, pebble: PebbleServer, names: list[str], threads: int) -> None:
    server = None
    if result.mode == "http-01":
        server = TokenServer(pebble.http_port)
        threading.Thread(target=server.serve_forever, daemon=True, name="floor-http01").start()
    try:
        t0 = time.perf_counter()
        floor = Floor(pebble, server.tokens if server else None, result.key_type)
        result.setup["register"] = time.perf_counter() - t0
        work: queue.SimpleQueue[str] = queue.SimpleQueue()
        for name in names:
            work.put(name)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                try:
                    name = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    ok = floor.issue(name)
                    error = "" if ok else f"{name}: certificate does not match the key"
                except Exception as exc:
                    ok, error = False, f"{name}: {type(exc).__name__}: {exc}"
                with lock:
                    if ok:
                        result.valid += 1
                    else:
                        result.failures.append(error)

        with timed(result, pebble):
            pool = [threading.Thread(target=worker, name=f"floor-{i}") for i in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


# -- certbroker ----------------------------------------------------------------------------


def run_certbroker(
    result: Result,
    pebble: PebbleServer,
    names: list[str],
    data_dir: Path,
    pool: bool,
    renew: bool = False,
) -> None:
    from sqlalchemy import func, select, update

    from certbroker.config import load_settings
    from certbroker.domain.keys import KeyType
    from certbroker.domain.models import CertificateStatus
    from certbroker.services.accounts import Registration
    from certbroker.services.issuance import Outcome
    from certbroker.services.leases import make_owner
    from certbroker.services.requests import CertificateRequest
    from certbroker.services.workers import WorkerPool
    from certbroker.store.schema import certificate_history, certificates, orders
    from certbroker.wiring import build
    from certbroker.worker_processes import WorkerProcesses

    t0 = time.perf_counter()
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": data_dir,
            "http01_port": pebble.http_port,
            "http01_address": "127.0.0.1",
            "workers": WORKERS,
            "log_level": "warning",
        },
    )
    broker = build(settings)
    account = broker.accounts.register(
        Registration(
            directory=pebble.directory_url,
            emails=["bench@example.com"],
            agree_tos=True,
            name="bench",
            ca_bundle=pebble.ca_bundle.read_text(),
        )
    )
    result.setup["build+register"] = time.perf_counter() - t0
    responder = broker.bind_responder().start() if result.mode == "http-01" else None
    try:
        if not pool:
            owner = make_owner("bench")
            with timed(result, pebble):
                for name in names:
                    cert, _ = broker.requests.request(
                        CertificateRequest(
                            names=[name], account=account.name, key_type=KeyType(result.key_type)
                        ),
                        lease_owner=owner,
                    )
                    outcome = broker.issuance.wait_for(cert.id, owner)
                    if outcome.outcome is not Outcome.ISSUED:
                        result.failures.append(f"{name}: {outcome.outcome} {outcome.message}")
        else:
            t0 = time.perf_counter()
            for name in names:
                broker.requests.request(
                    CertificateRequest(
                        names=[name], account=account.name, key_type=KeyType(result.key_type)
                    )
                )
            result.setup["request all"] = time.perf_counter() - t0
            # As `serve` does: worker processes besides this one, each with its pool.
            t0 = time.perf_counter()
            processes = settings.effective_worker_processes
            others = WorkerProcesses(settings, processes - 1).start(go=False)
            result.setup["worker processes start"] = time.perf_counter() - t0
            result.processes = processes
            workers = WorkerPool(broker.issuance, workers=WORKERS)
            pending = select(func.count()).where(
                certificates.c.status == CertificateStatus.PENDING.value
            )
            renewed = select(func.count()).select_from(certificate_history)

            def wait_until(query: Any, value: int) -> None:
                while True:
                    with broker.repo.engine.connect() as conn:
                        if conn.execute(query).scalar_one() == value:
                            return
                    time.sleep(0.02)

            try:
                if renew:  # issue them first, untimed; then make them all due
                    t0 = time.perf_counter()
                    others.release()
                    workers.start()
                    wait_until(pending, 0)
                    with broker.repo.engine.begin() as conn:
                        conn.execute(
                            update(certificates).values(
                                renew_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
                            )
                        )
                    result.setup["first issuance"] = time.perf_counter() - t0
                    with timed(result, pebble, helpers=others.pids()):
                        broker.renewal.queue_due()  # the scheduler's tick
                        workers.wake()
                        wait_until(renewed, len(names))
                else:
                    with timed(result, pebble, helpers=others.pids()):
                        others.release()
                        workers.start()
                        wait_until(pending, 0)
                result.maxrss_kib += sum(map(_proc_hwm_kib, others.pids()))
            finally:
                others.terminate()
                workers.stop()
                others.stop()
        failed = select(certificates.c.names, orders.c.state, orders.c.error_message).join(
            orders, orders.c.certificate_id == certificates.c.id
        )
        with broker.repo.engine.connect() as conn:
            result.valid = conn.execute(
                select(func.count()).where(
                    certificates.c.status == CertificateStatus.VALID.value,
                    certificates.c.cert_pem.is_not(None),
                )
            ).scalar_one()
            for names_json, state, message in conn.execute(
                failed.where(certificates.c.status != CertificateStatus.VALID.value)
            ):
                result.failures.append(f"{names_json}: order {state}: {message}")
            retried = conn.execute(select(func.count()).where(orders.c.attempts > 0)).scalar_one()
        if retried:
            result.setup["orders retried"] = float(retried)
    finally:
        if responder is not None:
            responder.stop()


# -- one scenario (child process) -------------------------------------------------------------


def run_child(mode: str, scenario: str, n: int, out: Path, key_type: str) -> None:
    result = Result(mode=mode, scenario=scenario, n=n, key_type=key_type)
    with tempfile.TemporaryDirectory(prefix="certbroker-bench-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # no stray certbroker.toml from the caller's directory
        t0 = time.perf_counter()
        pebble = start_pebble(
            work / "pebble", http_port=free_port(), always_valid=mode == "always-valid"
        )
        result.setup["pebble start"] = time.perf_counter() - t0
        try:
            run_id = f"{os.getpid():x}"
            names = [f"c{i}-{scenario}-{run_id}.bench.example.com" for i in range(n)]
            if scenario.startswith("floor-"):
                run_floor(result, pebble, names, threads=int(scenario.split("-")[1]))
            elif scenario in PEERS:
                # maxrss: the peak of one call of the tool (its largest process), by GNU time.
                # uacme's nginx: its CPU counts, its memory not.
                result.valid, result.failures, setup, result.maxrss_kib = run_peer(
                    scenario, work, pebble.directory_url, pebble.ca_bundle, pebble.http_port,
                    key_type, names, lambda helpers: timed(result, pebble, helpers),
                )  # fmt: skip
                result.setup.update(setup)
            else:
                run_certbroker(
                    result,
                    pebble,
                    names,
                    work / "data",
                    pool=scenario in ("cb-pool", "cb-renew"),
                    renew=scenario == "cb-renew",
                )
            result.pebble_hwm_kib = _proc_hwm_kib(pebble.pid)
        finally:
            pebble.stop()
    if scenario not in PEERS:
        result.maxrss_kib += resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.write_text(json.dumps(asdict(result)))


def spawn_scenario(mode: str, scenario: str, n: int, key_type: str) -> Result:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    try:
        argv = [
            sys.executable, __file__, "--child", scenario, "--mode", mode, "--n", str(n),
            "--key-type", key_type,
        ]  # fmt: skip
        proc = subprocess.run([*argv, "--result", str(out)], check=False, cwd=ROOT)
        if proc.returncode != 0 or not out.stat().st_size:
            return Result(mode, scenario, n, key_type, failures=[f"child exited {proc.returncode}"])
        data = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    return Result(**data)


# -- the report ----------------------------------------------------------------------------


def environment() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cores = len(re.findall(r"^processor\s*:", cpuinfo, re.M))
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M).group(1))  # type: ignore[union-attr]
    try:
        pebble = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "pebble"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pebble = "unknown"
    return {
        "date": dt.date.today().isoformat(),
        "cores": str(cores),
        "cpu": model.group(1).strip() if model else platform.machine(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "pebble": pebble,
        "python": platform.python_version(),
        "acme": version("acme"),
        "cryptography": version("cryptography"),
        "sqlalchemy": version("SQLAlchemy"),
        **peer_versions(),
    }


Key = tuple[str, str, str]  # (mode, key type, scenario)


def key_of(r: Result) -> Key:
    return (r.mode, r.key_type, r.scenario)


def verdicts(results: list[Result]) -> list[tuple[str, float, bool]]:
    """(what, ratio, met) for every target of issues 2, 3 and 5 this run can judge."""
    by = {key_of(r): r for r in results}
    out = []
    for mode in MODES:
        for key in KEY_TYPES:
            ours = by.get((mode, key, "cb-pool"))
            if ours is None or not ours.rate:
                continue
            where = f"{mode}, {key}"
            floor = by.get((mode, key, "floor-8"))
            if floor and floor.rate:
                ratio = ours.rate / floor.rate
                out.append((f"{where}: cb-pool / floor-8 (target >= {TARGET:.0%})", ratio,
                            ratio >= TARGET))  # fmt: skip
            for peer, target in (("certbot", VS_CERTBOT), ("lego", VS_LEGO)):
                theirs = by.get((mode, key, peer))
                if theirs and theirs.rate:
                    ratio = ours.rate / theirs.rate
                    out.append((f"{where}: cb-pool / {peer} certs/s (target >= {target:.0f}x)",
                                ratio, ratio >= target))  # fmt: skip
            certbot = by.get((mode, key, "certbot"))
            if certbot and certbot.valid and ours.valid:
                ratio = (ours.cpu / ours.valid) / (certbot.cpu / certbot.valid)
                out.append((f"{where}: CPU per certificate, cb-pool / certbot (target < 1)",
                            ratio, ratio < 1))  # fmt: skip
    renew = by.get(("always-valid", "ec-p256", "cb-renew"))
    floor = by.get(("always-valid", "ec-p256", "floor-8"))
    if renew and floor and floor.rate:
        ratio = renew.rate / floor.rate
        out.append((f"renewal: cb-renew / floor-8 (target >= {TARGET:.0%})", ratio,
                    ratio >= TARGET))  # fmt: skip
    return out


def comparisons(results: list[Result]) -> list[tuple[str, float]]:
    """(what, ratio), without a target, in the same mode and key type: cb-pool's
    certificates per second over each tool's that has no target of its own (uacme), the
    CLI batch's (cb-batch) over every tool's, and the floor's over certbot's and lego's."""
    by = {key_of(r): r for r in results}
    out = []
    for mode in MODES:
        for key in KEY_TYPES:
            pairs = [("cb-pool", t) for t in TOOLS if t not in ("certbot", "lego")]
            pairs += [("cb-batch", t) for t in TOOLS]
            # The ceiling: what the acme library alone gets over each tool on this machine;
            # a target above it cannot be met here by any client of that library.
            pairs += [("floor-8", t) for t in ("certbot", "lego")]
            for mine, peer in pairs:
                ours, theirs = by.get((mode, key, mine)), by.get((mode, key, peer))
                if ours and ours.rate and theirs and theirs.rate:
                    out.append((f"{mode}, {key}: {mine} / {peer} certs/s (no target)",
                                ours.rate / theirs.rate))  # fmt: skip
    return out


def write_json(results: list[Result], quick: bool) -> None:
    """bench/results/issuance.json for bench/summary.py: per mode and key type, cb-pool's
    certificates per second and CPU per certificate against each peer, with the targets."""
    by = {key_of(r): r for r in results}
    figures: list[dict[str, Any]] = []
    for mode in MODES:
        for key in KEY_TYPES:
            ours = by.get((mode, key, "cb-pool"))
            if ours is None or not ours.valid:
                continue
            peers = {
                s: by[(mode, key, s)]
                for s in ("floor-8", *PEERS)
                if (mode, key, s) in by and by[(mode, key, s)].valid
            }
            figures.append(
                {
                    "figure": f"issuance, {mode}, {key}: cb-pool certificates/s",
                    "unit": "certs/s",
                    "certbroker": ours.rate,
                    "peers": {s: r.rate for s, r in peers.items()},
                    "targets": [
                        {"peer": "floor-8", "min_ratio": TARGET},
                        {"peer": "certbot", "min_ratio": VS_CERTBOT},
                        {"peer": "lego", "min_ratio": VS_LEGO},
                    ],
                }
            )
            figures.append(
                {
                    "figure": f"issuance, {mode}, {key}: CPU per certificate",
                    "unit": "ms",
                    "certbroker": ours.cpu / ours.valid * 1000,
                    "peers": {s: r.cpu / r.valid * 1000 for s, r in peers.items()},
                    "targets": [{"peer": "certbot", "max_ratio": 1.0}],
                }
            )
    renew = by.get(("always-valid", "ec-p256", "cb-renew"))
    floor = by.get(("always-valid", "ec-p256", "floor-8"))
    if renew and floor and renew.valid:
        figures.append(
            {
                "figure": f"renewal of {renew.n} due certificates, certificates/s",
                "unit": "certs/s",
                "certbroker": renew.rate,
                "peers": {"floor-8": floor.rate},
                "targets": [{"peer": "floor-8", "min_ratio": TARGET}],
            }
        )
    write_results("issuance", figures, quick)


def show_ratio(ratio: float) -> str:
    return f"{ratio:.0%}" if ratio < 2 else f"{ratio:.1f}x"


def median(runs: list[Result]) -> Result:
    """The median run by rate among those where every certificate ended valid (else among
    all); with an even count the slower of the two middle ones. Not the best: one run on a
    suddenly faster host (seen: 56/s between two of 37/s) must not make the figure."""
    clean = sorted((r for r in runs if not r.failures and r.valid == r.n), key=lambda r: r.rate)
    ordered = clean or sorted(runs, key=lambda r: r.rate)
    return ordered[(len(ordered) - 1) // 2]


def table(results: list[Result], runs: dict[Key, list[Result]]) -> str:
    floors = {(r.mode, r.key_type): r.rate for r in results if r.scenario == "floor-8"}
    lines = [
        "| mode | key | scenario | valid/N | wall s | certs/s | all runs certs/s | vs floor-8 "
        "| CPU ms/cert bench (sys) | CPU ms/cert Pebble | busy cores, others "
        "| peak RSS MiB | Pebble peak MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        floor = floors.get((r.mode, r.key_type))
        vs = show_ratio(r.rate / floor) if floor else "-"
        per = max(r.valid, 1)
        every = runs[key_of(r)]
        valid = sum(x.valid for x in every)
        rates = "/".join(f"{x.rate:.0f}" for x in every)
        lines.append(
            f"| {r.mode} | {r.key_type} | {r.scenario} | {valid}/{sum(x.n for x in every)} "
            f"| {r.wall:.2f} "
            f"| {r.rate:.1f} | {rates} | {vs} "
            f"| {r.cpu / per * 1000:.1f} ({r.cpu_sys / per * 1000:.1f}) "
            f"| {r.pebble_cpu / per * 1000:.1f} | {r.others:.2f} "
            f"| {r.maxrss_kib / 1024:.0f} | {r.pebble_hwm_kib / 1024:.0f} |"
        )
    return "\n".join(lines)


def report(
    results: list[Result],
    runs: dict[Key, list[Result]],
    env: dict[str, str],
    n: int,
    repeat: int,
    peer_repeat: int,
) -> str:
    peers = "" if peer_repeat == repeat else f" (certbot, lego, uacme, cb-cli: {peer_repeat})"
    parts = [
        f"### {env['date']}, N={n}, median of {repeat}{peers}",
        "",
        f"Machine: {env['cores']} cores ({env['cpu']}), {env['memory']} RAM. Pebble "
        f"{env['pebble']}, Python {env['python']}, acme {env['acme']}, cryptography "
        f"{env['cryptography']}, SQLAlchemy {env['sqlalchemy']}; "
        f"{env.get('certbot', 'certbot not run')} (PyPI), lego {env.get('lego (Debian)', '-')} "
        f"and uacme {env.get('uacme (Debian)', '-')} (Debian).",
        "",
        table(results, runs),
        "",
    ]
    for what, ratio, met in verdicts(results):
        parts.append(f"- {what}: {show_ratio(ratio)} ({'met' if met else 'MISSED'})")
    for what, ratio in comparisons(results):
        parts.append(f"- {what}: {show_ratio(ratio)}")
    for key, every in runs.items():
        failures = [f for r in every for f in r.failures]
        if failures:
            parts.append(
                f"- {' '.join(key)}: {len(failures)} failure(s) over {len(every)} run(s), "
                f"first: `{failures[0][:200]}`"
            )
    for r in results:
        if "request all" in r.setup:
            parts.append(
                f"- {r.mode} {r.scenario}: requesting the {r.n} certificates took "
                f"{r.setup['request all']:.2f} s before the pool started (not timed)"
            )
    return "\n".join(parts).rstrip() + "\n"


INTRO = """# Benchmarks

Generated by `bench/issuance.py`; the results section is rewritten by the script.
"""


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"{INTRO}\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    body, tail = rest.split(END, 1)

    def key(block: str) -> list[str]:  # "### <date>, N=<n>"
        return block.splitlines()[0].split(", ")[:2]

    # One section per date and N: a rerun the same day replaces it; newest first.
    blocks = [b for b in re.split(r"(?m)^(?=### )", body.strip()) if b.strip()]
    blocks = [b for b in blocks if key(b) != key(section)]
    body = "\n".join(b.rstrip() + "\n" for b in [section, *blocks])
    DOC.write_text(f"{head}{START}\n{body}{END}{tail}")


def wait_quiet(limit: float) -> float:
    """Wait (up to `limit` s) until other processes leave the CPUs alone; returns the load."""
    deadline = time.monotonic() + limit
    said = False
    while True:
        busy0, t0 = _system_busy(), time.perf_counter()
        time.sleep(1.0)
        load = (_system_busy() - busy0) / (time.perf_counter() - t0)
        if load < QUIET or time.monotonic() >= deadline:
            return load
        if not said:
            print(f"  (waiting up to {limit:.0f} s: {load:.1f} cores busy elsewhere)", flush=True)
            said = True
        time.sleep(2.0)


def show(r: Result) -> None:
    per = max(r.valid, 1)
    print(
        f"{r.mode:>12} {r.key_type:<7} {r.scenario:<8} {r.valid:>4}/{r.n} valid {r.wall:7.2f} s "
        f"{r.rate:6.1f} certs/s  CPU {r.cpu / per * 1000:5.1f} ms/cert "
        f"(sys {r.cpu_sys / per * 1000:4.1f}, Pebble {r.pebble_cpu / per * 1000:4.1f})  "
        f"RSS {r.maxrss_kib / 1024:.0f} MiB  others {r.others:.2f} cores",
        flush=True,
    )
    if r.listen_overflows:
        print(f"    {r.listen_overflows} connection(s) dropped: a listen backlog was full")
    for failure in r.failures[:10]:
        print(f"    FAILED {failure}", flush=True)
    if len(r.failures) > 10:
        print(f"    ... and {len(r.failures) - 10} more", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=50, help=f"certificates per scenario (cb-renew: {N_RENEW})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N=3, one run each, EC keys, no floor-1/cb-seq, peers in always-valid only",
    )
    parser.add_argument("--repeat", type=int, help="runs per scenario, the median kept (default 3)")
    parser.add_argument(
        "--peer-repeat",
        type=int,
        default=1,
        help="runs of each scripted tool (certbot, lego, uacme, cb-cli), at most --repeat; "
        "default 1: one run is already N certificates one after another, and takes minutes",
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=None,
        help="before each run, wait up to this many seconds for other processes to go quiet "
        "(default 120; --quick: 5)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--key-types", default=",".join(KEY_TYPES), help="comma-separated")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--key-type", choices=KEY_TYPES, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = 3 if args.quick else args.n
    repeat = args.repeat or (1 if args.quick else 3)

    if args.child:
        run_child(args.mode, args.child, n, args.result, args.key_type)
        return 0

    modes = [m for m in args.modes.split(",") if m]
    scenarios = [s for s in args.scenarios.split(",") if s]
    keys = [k for k in args.key_types.split(",") if k]
    if args.quick:  # under two minutes: the comparisons that carry a target, EC keys
        keys = ["ec-p256"]
        scenarios = [s for s in scenarios if s not in ("floor-1", "cb-seq")]
    for value, known in ((modes, MODES), (scenarios, SCENARIOS), (keys, KEY_TYPES)):
        unknown = set(value) - set(known)
        if unknown:
            parser.error(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    env = environment()
    print(
        f"certbroker issuance benchmark: N={n}, median of {repeat} (scripted tools: "
        f"{min(repeat, args.peer_repeat)}), {env['cores']} cores, "
        f"{env['memory']}, Pebble {env['pebble']}, Python {env['python']}, acme {env['acme']}",
        flush=True,
    )
    runs: dict[Key, list[Result]] = {
        (m, k, s): []
        for m in modes
        for k in keys
        for s in scenarios
        if (m == "always-valid" or s not in ONLY_ALWAYS_VALID)
        and (k == "ec-p256" or s not in ONLY_EC)
        # --quick: the peers only where they are fastest (lego takes 6 s a certificate
        # over http-01), so the whole `make bench QUICK=1` stays under two minutes
        and not (args.quick and m == "http-01" and s in PEERS)
    }
    for round_ in range(repeat):
        if repeat > 1:
            print(f"-- run {round_ + 1} of {repeat}", flush=True)
        for mode, key, scenario in runs:
            if scenario in SCRIPTED and round_ >= args.peer_repeat:
                continue
            wait_quiet(args.idle_wait if args.idle_wait is not None else 5 if args.quick else 120)
            count = (4 * n if args.quick else N_RENEW) if scenario == "cb-renew" else n
            r = spawn_scenario(mode, scenario, count, key)
            runs[(mode, key, scenario)].append(r)
            show(r)
    results = [median(every) for every in runs.values()]
    if repeat > 1:
        print("-- median runs")
        for r in results:
            show(r)
    for what, ratio, met in verdicts(results):
        print(f"{what}: {show_ratio(ratio)} ({'met' if met else 'MISSED'})")
    for what, ratio in comparisons(results):
        print(f"{what}: {show_ratio(ratio)}")
    busy = [r for r in results if r.others > QUIET]
    if busy:
        print(f"warning: other processes kept CPUs busy during {len(busy)} of the kept runs")
    write_json(results, args.quick)
    if not args.no_write and not args.quick:  # a quick run never replaces the figures
        write_doc(report(results, runs, env, n, repeat, min(repeat, args.peer_repeat)))
        print(f"wrote {DOC.relative_to(ROOT)}")
    # A peer's own failures (certbot gives up on Pebble's badNonce) are in the table; only
    # certbroker's and the floor's fail the run.
    every = [r for group in runs.values() for r in group if r.scenario not in TOOLS]
    return 1 if any(r.failures or r.valid != r.n for r in every) else 0


if __name__ == "__main__":
    sys.exit(main())
