"""Device CSRs over the REST API against the in-process floor, and the broker's memory
while websockets wait (issue 14, "Performance").

Against real Pebble on loopback, validating every name over HTTP-01 (its default 5 %
badNonce rejection kept), EC P-256 keys, one name per certificate, N = 500:

* the floor: bench/issuance.py's `cb-pool` scenario in `http-01` mode, run as that script
  runs it (a child process, a fresh Pebble): certbroker's worker pools as `serve` runs
  them (worker_processes processes, one per core by default, 8 workers each) with no
  HTTP API in between. The N certificates are requested in process first (timed apart:
  "storing the requests"), then the pools run until none is pending (timed: the floor's
  certificates per second).
* REST: a `certbroker serve` (defaults: the same processes and workers; its log at
  warning, as the floor's; the renewal scheduler quiet) on a fresh Pebble, one account,
  one client (`certbroker client add devices --allow '*.devices.example.com'`). N keys and
  CSRs are made first (not timed). Then all N are posted to `POST /api/v1/csr` at once,
  50 in flight (httpx.AsyncClient, one event loop), and polled through
  `GET /api/v1/csr/{id}` as a device would until each is `valid` (from the first answer
  on, a round every 0.25 s over the requests not yet valid, in ID order, 8 GETs at once,
  ending at the 8th still pending one, so the polling stays about one GET per
  certificate). The figure: certificates per second from the first POST to the last
  certificate valid in the store (the finish time of its order, as precise as the
  floor's end, which looks at the store every 20 ms), and its ratio to the floor (issue
  14's target: at least 70 %); the time the polling saw the last `valid` is reported
  too. Also: the POST answers' latency (median, p95, the first and the last fifth) and,
  from the store's order timestamps, where the time went (posting, waiting for a
  worker, the order).
  Every chain is checked to hold the device's own key (after the clock stops).
* memory: on the same `serve` once the REST run is over, 500 websockets
  (`/api/v1/csr/ws`, the `websockets` package, asyncio) opened at once by a second client
  whose policy is `approve`, each sending one CSR for a name off its allow-list, so every
  request stays `awaiting-approval` and nothing is ordered while they wait. The resident
  memory (VmRSS) of `serve` and its worker processes, before the connections and once
  each of them has been answered `awaiting-approval` (the largest of samples over 3 s),
  and the CPU serve spends while they only wait (a connection whose requests all await
  approval looks at them every 5 s).

With --repeat R (default 3; --quick: 1) the floor and REST runs alternate R times and the
median of each is kept; the memory is measured once, after the last REST run.

`make bench` runs it; `--write` replaces its section of docs/benchmarks.md and writes
bench/results/devices.json. `--quick`: N = 50, 50 websockets, one run, nothing written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench.*, tests.support

import httpx  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from tests.support.pebble import PebbleServer, start_pebble  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.processes import terminate  # noqa: E402

from bench.api import cli  # noqa: E402
from bench.api import start_serve as start_api_serve  # noqa: E402
from bench.common import write_results, write_section  # noqa: E402
from bench.issuance import Result, _system_busy, spawn_scenario, wait_quiet  # noqa: E402

START, END = "<!-- devices:start -->", "<!-- devices:end -->"
HEADING = "## Device CSRs over REST, websockets (`bench/devices.py`)"
TARGET = 0.70  # issue 14: REST certificates/s at least 70 % of the in-process floor
IN_FLIGHT = 50  # POSTs at once
POLL_ROUND = 0.25  # seconds between polling rounds
POLL_AHEAD = 8  # a round ends at this many requests still pending
WS_SAMPLES = 3.0  # seconds of RSS samples while every websocket waits
DOMAIN = "devices.example.com"  # on the devices' allow-list
ELSEWHERE = "waiting.example.org"  # off the waiting client's list: awaiting-approval


# -- devices -----------------------------------------------------------------------------


@dataclass
class Device:
    name: str
    key: ec.EllipticCurvePrivateKey
    csr: str


def make_devices(n: int, label: str, domain: str) -> list[Device]:
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"{label}{i}.{domain}"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        out.append(Device(name, key, csr))
    return out


def spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# -- processes ---------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> str:
    """Enough file descriptors for `needed` sockets here and in `serve` (which inherits
    the limit); returns what the limit is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"open files limit {soft} < {needed}, hard limit {hard}")
    return str(soft)


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return found


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def threads_of(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def broker_env(data: Path, port: int, pebble: PebbleServer, admin: str) -> dict[str, str]:
    """The environment of a bench's `serve` and CLI on a fresh store under `data`, its API
    on `port` (the renewal scheduler quiet, warnings only), with one ACME account
    registered at `pebble`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        CERTBROKER_DATA_DIR=str(data), CERTBROKER_LISTEN=f"127.0.0.1:{port}",
        CERTBROKER_HTTP01_PORT=str(pebble.http_port), CERTBROKER_HTTP01_ADDRESS="127.0.0.1",
        CERTBROKER_SCHEDULER_INTERVAL="3600", CERTBROKER_LOG_LEVEL="warning",
        CERTBROKER_ADMIN_PASSWORD=admin, NO_PROXY="*",
    )  # fmt: skip
    cli(env, "account", "register", "--directory", pebble.directory_url,
        "--email", "bench@example.com", "--agree-tos",
        "--ca-bundle", str(pebble.ca_bundle))  # fmt: skip
    return env


def start_serve(env: dict[str, str], log: Path, base: str) -> subprocess.Popen[bytes]:
    """bench/api.py's, then until its worker processes exist (they said "ready")."""
    serve = start_api_serve(env, log, base)
    while len(tree(serve.pid)) < int(
        env.get("CERTBROKER_WORKER_PROCESSES") or len(os.sched_getaffinity(0))
    ):
        time.sleep(0.1)
    return serve


# -- REST --------------------------------------------------------------------------------


@dataclass
class Rest:
    n: int
    wall: float = 0.0  # first POST -> the last certificate valid in the store
    seen: float = 0.0  # first POST -> the last `valid` seen by polling
    first_post: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    post_wall: float = 0.0  # first POST -> last POST answered
    post_ms: list[float] = field(default_factory=list)
    valid: int = 0
    failures: list[str] = field(default_factory=list)
    gets: int = 0  # polling GETs
    store: dict[str, float] = field(default_factory=dict)  # from the orders' timestamps
    serve_cpu: float = 0.0  # serve + worker processes, CPU seconds over the timed part
    pebble_cpu: float = 0.0
    client_cpu: float = 0.0  # the simulated devices (this process): on the same 2 cores
    others: float = 0.0  # cores other processes kept busy during the timed part
    retried: int = 0

    @property
    def rate(self) -> float:
        return self.valid / self.wall if self.wall else 0.0


async def post_and_poll(base: str, token: str, devices: list[Device], rest: Rest) -> None:
    """Post every CSR (IN_FLIGHT at once) and, from the first answer on, poll the posted
    ones until each is valid, as devices would; the clock runs from the first POST to the
    last `valid` seen."""
    limits = httpx.Limits(max_connections=IN_FLIGHT + POLL_AHEAD, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=120, trust_env=False
    ) as client:
        gate = asyncio.Semaphore(IN_FLIGHT)
        posted: list[tuple[int, int]] = []  # (request ID, device), as answered
        chains: dict[int, str] = {}
        posting_done = asyncio.Event()

        async def post(i: int) -> None:
            async with gate:
                t0 = time.perf_counter()
                answer = await client.post("/api/v1/csr", json={"csr": devices[i].csr})
                rest.post_ms.append((time.perf_counter() - t0) * 1000)
            if answer.status_code != 202:
                rest.failures.append(
                    f"{devices[i].name}: POST answered {answer.status_code} {answer.text[:300]}"
                )
            else:
                posted.append((answer.json()["id"], i))

        async def look(request_id: int, i: int) -> bool:
            """True once it is done (valid or failed)."""
            answer = await client.get(f"/api/v1/csr/{request_id}")
            rest.gets += 1
            state = answer.json()
            if state["state"] == "valid":
                chains[i] = state["chain"]
                return True
            if state["state"] in ("failed", "denied", "revoked", "expired", "superseded"):
                rest.failures.append(f"{devices[i].name}: {state['state']} {state.get('error')}")
                return True
            return False

        async def poll() -> None:
            done: set[int] = set()
            while True:
                finished = posting_done.is_set()
                waiting = sorted(p for p in posted if p[0] not in done)
                if finished and not waiting:
                    return
                pending = 0
                for k in range(0, len(waiting), POLL_AHEAD):  # POLL_AHEAD GETs at once
                    chunk = waiting[k : k + POLL_AHEAD]
                    results = await asyncio.gather(*(look(r, i) for r, i in chunk))
                    done.update(r for (r, _), ok in zip(chunk, results, strict=True) if ok)
                    pending += results.count(False)
                    if pending >= POLL_AHEAD:
                        break
                await asyncio.sleep(POLL_ROUND)

        async def post_all() -> None:
            await asyncio.gather(*(post(i) for i in range(len(devices))))
            rest.post_wall = time.perf_counter() - t0
            posting_done.set()

        t0 = time.perf_counter()
        rest.first_post = dt.datetime.now(dt.UTC)
        await asyncio.gather(post_all(), poll())
        rest.seen = time.perf_counter() - t0
    for i, chain in chains.items():  # after the clock stopped
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        if spki(leaf.public_key()) != spki(devices[i].key.public_key()):
            rest.failures.append(f"{devices[i].name}: the chain is not for the device's key")
        else:
            rest.valid += 1


def order_phases(db: Path, first_post: dt.datetime) -> tuple[dict[str, float], int]:
    """Where the time went, from the orders' timestamps (UTC, naive in SQLite)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT created_at, started_at, finished_at, attempts FROM orders "
            "WHERE purpose = 'issue' AND state = 'valid'"
        ).fetchall()
    finally:
        con.close()

    def at(text: str) -> float:
        when = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
        return (when - first_post).total_seconds()

    created = [at(r[0]) for r in rows]
    started = [at(r[1]) for r in rows if r[1]]
    finished = [at(r[2]) for r in rows if r[2]]
    waits = [at(r[1]) - at(r[0]) for r in rows if r[1]]
    takes = [at(r[2]) - at(r[1]) for r in rows if r[1] and r[2]]
    phases = {
        "last order stored": max(created),
        "first order started": min(started),
        "last order started": max(started),
        "first order finished": min(finished),
        "last order finished": max(finished),
        "wait for a worker, median": statistics.median(waits),
        "one order, median": statistics.median(takes),
        "one order, p95": statistics.quantiles(takes, n=20, method="inclusive")[18],
    }
    return phases, sum(1 for r in rows if r[3])


def run_rest(
    work: Path, devices: list[Device], waiting: int | None, quiet: float
) -> tuple[Rest, Memory | None]:
    """One REST run on a fresh Pebble and `serve`; with `waiting`, then the memory of that
    many websockets on the same `serve`."""
    rest = Rest(n=len(devices))
    pebble = start_pebble(work / "pebble", http_port=free_port())
    serve = None
    try:
        data = work / "data"
        port = free_port()
        env = broker_env(data, port, pebble, "bench-devices-admin-0123456789")
        token = cli(env, "client", "add", "devices", "--allow", f"*.{DOMAIN}")
        token = token.strip().splitlines()[-1].strip()
        waiter = cli(env, "client", "add", "waiting", "--allow", f"listed.{ELSEWHERE}",
                     "--policy", "approve")  # fmt: skip
        waiter = waiter.strip().splitlines()[-1].strip()
        base = f"http://127.0.0.1:{port}"
        serve = start_serve(env, work / "serve.log", base)
        pids = tree(serve.pid)
        wait_quiet(quiet)
        helper = pebble._challtestsrv
        pebble_pids = [p for p in (pebble.pid, helper.pid if helper else None) if p]
        cpu0, pcpu0 = cpu_s(pids), cpu_s(pebble_pids)
        own0, busy0 = cpu_s([os.getpid()]), _system_busy()
        asyncio.run(post_and_poll(base, token, devices, rest))
        rest.serve_cpu, rest.pebble_cpu = cpu_s(pids) - cpu0, cpu_s(pebble_pids) - pcpu0
        rest.client_cpu = cpu_s([os.getpid()]) - own0  # the devices: this process
        mine = rest.serve_cpu + rest.pebble_cpu + rest.client_cpu
        rest.others = max(0.0, _system_busy() - busy0 - mine) / rest.seen
        rest.store, rest.retried = order_phases(data / "certbroker.db", rest.first_post)
        rest.wall = rest.store["last order finished"]
        memory = None
        if waiting:
            wait_quiet(quiet)
            ws_devices = make_devices(waiting, "w", ELSEWHERE)
            memory = asyncio.run(hold_websockets(base, waiter, ws_devices, serve.pid))
        return rest, memory
    finally:
        terminate(serve)
        pebble.stop()
        if rest.failures and (work / "serve.log").exists():
            kept = Path(tempfile.gettempdir()) / f"certbroker-bench-devices-{os.getpid()}.log"
            kept.write_bytes((work / "serve.log").read_bytes())
            print(f"serve's log kept in {kept}", file=sys.stderr)


# -- websockets --------------------------------------------------------------------------


@dataclass
class Memory:
    connections: int
    before_kib: int
    waiting_kib: int
    opened_s: float  # all opened and answered awaiting-approval, from the first connect
    idle_cores: float  # serve's CPU while they only wait
    threads_before: int
    threads_waiting: int
    per_process_kib: dict[str, int] = field(default_factory=dict)

    @property
    def per_connection_kib(self) -> float:
        return (self.waiting_kib - self.before_kib) / self.connections


async def hold_websockets(base: str, token: str, devices: list[Device], serve_pid: int) -> Memory:
    from websockets.asyncio.client import connect

    url = base.replace("http://", "ws://") + "/api/v1/csr/ws"
    pids = tree(serve_pid)
    before = rss_kib(pids)
    threads_before = threads_of(serve_pid)
    answered = 0
    all_answered = asyncio.Event()
    done = asyncio.Event()
    errors: list[str] = []

    async def one(device: Device) -> None:
        nonlocal answered
        try:
            async with connect(
                url, additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=120, ping_interval=None, max_queue=4,
            ) as socket:  # fmt: skip
                await socket.send(json.dumps({"csr": device.csr}))
                state: dict[str, Any] = {}
                while "state" not in state and "error" not in state:  # past other news
                    state = json.loads(await asyncio.wait_for(socket.recv(), timeout=120))
                if state.get("state") != "awaiting-approval":
                    errors.append(f"{device.name}: {state}")
                answered += 1
                if answered == len(devices):
                    all_answered.set()
                await done.wait()
        except Exception as exc:  # counted; the run goes on
            errors.append(f"{device.name}: {type(exc).__name__}: {exc}")
            answered += 1
            if answered == len(devices):
                all_answered.set()

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one(d)) for d in devices]
    await all_answered.wait()
    opened = time.perf_counter() - t0
    if errors:
        done.set()
        await asyncio.gather(*tasks)
        raise SystemExit(f"{len(errors)} websocket(s) failed, first: {errors[0]}")
    await asyncio.sleep(1.0)  # every connection past its first look at the store
    pids = tree(serve_pid)
    cpu0, c0 = cpu_s(pids), time.perf_counter()
    samples = []
    while time.perf_counter() - c0 < WS_SAMPLES:
        samples.append(rss_kib(pids))
        await asyncio.sleep(0.25)
    idle = (cpu_s(pids) - cpu0) / (time.perf_counter() - c0)
    per_process = {
        ("serve" if pid == serve_pid else f"worker process {pid}"): rss_kib([pid]) for pid in pids
    }
    threads_waiting = threads_of(serve_pid)
    done.set()
    await asyncio.gather(*tasks)
    return Memory(len(devices), before, max(samples), opened, idle, threads_before,
                  threads_waiting, per_process)  # fmt: skip


# -- the report --------------------------------------------------------------------------


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores, {mem:.1f} GiB, Python {platform.python_version()}, "
        f"certbroker {version('certbroker')}, uvicorn {version('uvicorn')}, "
        f"websockets {version('websockets')}, httpx {version('httpx')}"
    )


def pebble_version() -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "pebble"], capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def median_by_rate(runs: list[Any]) -> Any:
    ordered = sorted(runs, key=lambda r: r.rate)
    return ordered[(len(ordered) - 1) // 2]  # the slower middle one of an even count


def section(
    n: int, floors: list[Result], rests: list[Rest], memory: Memory, fds: str
) -> tuple[str, list[dict[str, Any]]]:
    floor, rest = median_by_rate(floors), median_by_rate(rests)
    ratio = rest.rate / floor.rate if floor.rate else 0.0
    stored = floor.setup.get("request all", 0.0)
    with_requests = floor.valid / (floor.wall + stored) if floor.wall else 0.0
    post = sorted(rest.post_ms)
    post_median = statistics.median(post)
    tenth = max(1, n // 5)
    first_ms = statistics.median(rest.post_ms[:tenth])
    last_ms = statistics.median(rest.post_ms[-tenth:])
    serve_ms = rest.serve_cpu / max(rest.valid, 1) * 1000
    floor_ms = floor.cpu / max(floor.valid, 1) * 1000
    pebble_ms = rest.pebble_cpu / max(rest.valid, 1) * 1000
    met = ratio >= TARGET
    lines = [
        f"### {dt.date.today().isoformat()}, N={n}, median of {len(rests)}",
        "",
        f"{machine()}; Pebble {pebble_version()} validating over HTTP-01 on loopback; "
        f"open files limit {fds}.",
        "",
        "| run | valid/N | wall s | certs/s | all runs certs/s | vs floor |",
        "|---|---|---:|---:|---:|---:|",
        f"| floor (`cb-pool`, in process) | {floor.valid}/{floor.n} | {floor.wall:.2f} | "
        f"{floor.rate:.1f} | {'/'.join(f'{r.rate:.1f}' for r in floors)} | 100% |",
        f"| floor, storing the requests included | {floor.valid}/{floor.n} | "
        f"{floor.wall + stored:.2f} | {with_requests:.1f} | - | "
        f"{with_requests / floor.rate:.0%} |",
        f"| REST: POST at once, until the last is valid | {rest.valid}/{rest.n} | "
        f"{rest.wall:.2f} | "
        f"{rest.rate:.1f} | {'/'.join(f'{r.rate:.1f}' for r in rests)} | {ratio:.0%} |",
        "",
        f"- target (issue 14): REST at least {TARGET:.0%} of the floor: {ratio:.0%}, "
        f"**{'met' if met else 'MISSED'}** (against the floor with storing the requests "
        f"included: {rest.rate / with_requests:.0%})",
        f"- POST `/api/v1/csr`, {IN_FLIGHT} in flight: answered in median {post_median:.0f} "
        f"ms, p95 {p95(post):.0f} ms; all {n} answered {rest.post_wall:.2f} s after the "
        f"first (the floor stores its {n} requests in process in {stored:.2f} s); in the "
        f"order answered, the first {tenth} POSTs' median {first_ms:.0f} ms, the last "
        f"{tenth}'s {last_ms:.0f} ms",
        f"- CPU over the REST run: serve and its worker processes {serve_ms:.0f} ms per "
        f"certificate (the floor's process and workers: {floor_ms:.0f} ms), Pebble "
        f"{pebble_ms:.0f} ms, the simulated devices (this bench's own process, on the "
        f"same cores) {rest.client_cpu / max(rest.valid, 1) * 1000:.0f} ms; other processes "
        f"kept {rest.others:.2f} cores busy during the REST run, {floor.others:.2f} during "
        "the floor's",
        f"- the devices' polling ({rest.gets} GETs, {rest.gets / n:.1f} per certificate) saw "
        f"the last `valid` {rest.seen:.2f} s after the first POST, {rest.seen - rest.wall:.2f} "
        f"s after the store had it (a round ends at the {POLL_AHEAD}th request still pending, "
        f"so those valid behind it are seen late); by that clock REST made "
        f"{rest.valid / rest.seen:.1f} certs/s ({rest.valid / rest.seen / floor.rate:.0%})",
        "- where the REST run's time went (the store's order timestamps, seconds from the "
        "first POST): "
        + ", ".join(f"{k} {v:.2f}" for k, v in rest.store.items())
        + (f"; {rest.retried} order(s) retried" if rest.retried else ""),
    ]
    mib = memory.waiting_kib / 1024
    lines += [
        "",
        f"Memory, the same `serve` after the REST run: {memory.connections} websockets opened "
        "at once, each sending one CSR for a name off its client's allow-list (policy "
        "`approve`), so all wait `awaiting-approval`:",
        "",
        "| serve + worker processes, VmRSS | MiB |",
        "|---|---:|",
        f"| before the connections | {memory.before_kib / 1024:.1f} |",
        f"| {memory.connections} websockets waiting | {mib:.1f} |",
        f"| per connection | {memory.per_connection_kib:.0f} KiB |",
        "",
        f"- all {memory.connections} opened and answered `awaiting-approval` "
        f"{memory.opened_s:.2f} s after the first connect; while they only waited, serve "
        f"kept {memory.idle_cores:.2f} cores busy (each connection looks at its waiting "
        f"request every 5 s); serve's threads {memory.threads_before} -> "
        f"{memory.threads_waiting}; by process: "
        + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in memory.per_process_kib.items()),
    ]
    figures: list[dict[str, Any]] = [
        {
            "figure": f"{n} device CSRs over REST, certificates/s (http-01, ec-p256)",
            "unit": "certs/s",
            "certbroker": round(rest.rate, 2),
            "peers": {"floor (cb-pool)": round(floor.rate, 2)},
            "targets": [{"peer": "floor (cb-pool)", "min_ratio": TARGET}],
        },
        {
            "figure": f"POST /api/v1/csr answer, {IN_FLIGHT} in flight (median)",
            "unit": "ms",
            "certbroker": round(post_median, 1),
        },
        {
            "figure": f"serve's memory while {memory.connections} websockets wait",
            "unit": "MiB",
            "certbroker": round(mib, 1),
        },
        {
            "figure": "memory per waiting websocket",
            "unit": "KiB",
            "certbroker": round(memory.per_connection_kib, 1),
        },
    ]
    return "\n".join(lines), figures


ABOUT = """\
What runs (issue 14's performance target): N = 500 device CSRs (EC P-256, one name each,
keys and CSRs made beforehand), validated over HTTP-01 by a local Pebble. The floor is
bench/issuance.py's `cb-pool` (the worker pools as `serve` runs them, no HTTP API in
between); REST posts the N CSRs to one `certbroker serve` at once (50 in flight) and polls
`GET /api/v1/csr/{id}` until all are valid; target: REST's certificates per second at
least 70 % of the floor's. Then, on the same `serve`, 500 websockets wait with a CSR
each (`awaiting-approval`), and the resident memory of serve and its worker processes is
read before and while they wait. Details in the script's docstring. Run it: `make bench`,
or `.venv/bin/python bench/devices.py --quick` (N = 50, nothing written).
"""


# -- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=50, 50 websockets, one run")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--n", type=int, help="certificates (default 500; --quick: 50)")
    parser.add_argument("--websockets", type=int, help="default 500; --quick: 50")
    parser.add_argument("--repeat", type=int, help="floor and REST runs (default 3; --quick 1)")
    args = parser.parse_args()
    n = args.n or (50 if args.quick else 500)
    sockets = args.websockets or (50 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 3)
    fds = raise_fd_limit(2 * sockets + 1024)
    floors: list[Result] = []
    rests: list[Rest] = []
    memory: Memory | None = None
    here = Path.cwd()
    quiet = 5.0 if args.quick else 60.0  # seconds to wait for other processes to calm down
    for round_ in range(repeat):
        print(f"-- run {round_ + 1} of {repeat}", file=sys.stderr, flush=True)
        wait_quiet(quiet)
        floor = spawn_scenario("http-01", "cb-pool", n, "ec-p256")
        if floor.failures or floor.valid != n:
            raise SystemExit(f"the floor failed: {floor.failures[:3]}")
        floors.append(floor)
        print(f"floor: {floor.valid}/{n} valid in {floor.wall:.2f} s, {floor.rate:.1f} "
              f"certs/s (requests stored in {floor.setup.get('request all', 0):.2f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
        devices = make_devices(n, f"d{round_}-", DOMAIN)
        with tempfile.TemporaryDirectory(prefix="certbroker-bench-devices-") as tmp:
            os.chdir(tmp)  # no ./certbroker.toml of the checkout is read
            try:
                last = round_ == repeat - 1
                rest, mem = run_rest(Path(tmp), devices, sockets if last else None, quiet)
            finally:
                os.chdir(here)
        if rest.failures or rest.valid != n:
            raise SystemExit(f"REST: {rest.valid}/{n} valid; {rest.failures[:3]}")
        rests.append(rest)
        memory = mem or memory
        print(f"REST: {rest.valid}/{n} valid in {rest.wall:.2f} s, {rest.rate:.1f} certs/s "
              f"({rest.rate / floor.rate:.0%} of this run's floor); POSTs answered in "
              f"{rest.post_wall:.2f} s, median {statistics.median(rest.post_ms):.0f} ms; "
              f"store: {json.dumps({k: round(v, 2) for k, v in rest.store.items()})}",
              file=sys.stderr, flush=True)  # fmt: skip
    assert memory is not None
    text, figures = section(n, floors, rests, memory, fds)
    print(text)
    if args.write and not args.quick:  # a quick run writes nothing
        out = write_results("devices", figures, quick=False)
        print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
        write_section(START, END, text, f"{HEADING}\n\n{ABOUT.strip()}")
        print("wrote docs/benchmarks.md", file=sys.stderr)
    return 0  # a missed target is reported in the section, not as a failure


if __name__ == "__main__":
    sys.exit(main())
