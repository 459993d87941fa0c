"""HTTP-01 responder: requests per second, certbroker's against nginx's (issue 5).

One token, one key authorization. certbroker's responder (`certbroker.challenges.http01`)
answers GET /.well-known/acme-challenge/<token> by looking the token up in its SQLite
store, as `certbroker serve` does; nginx (the Debian package) serves the same key
authorization as a static file under the same path. wrk (the Debian package) loads each
with the same settings (one thread, 32 keep-alive connections), after checking that each
answers the token with exactly the key authorization (200) and a wrong token with 404.

What runs, all on loopback:

* `certbroker, own process` (the figure the target is about): a child process that builds
  a broker as `serve` does (`wiring.build(load_settings(...))`), puts the token into the
  store and starts `broker.bind_responder()`, then only waits for SIGTERM, as serve's main
  thread does. Nothing else in that process wants the GIL.
* `certbroker, in this process`: the same responder started in the benchmark process
  itself, as a check that the child's figure is the responder's and not the harness's
  (this process only waits for wrk meanwhile).
* `nginx, 1 worker`: one single-threaded process, against certbroker's one process (one
  GIL): the like-for-like comparison, and the target's denominator.
* `nginx, auto`: `worker_processes auto` (one per core). On a 2-core machine the workers
  share the cores with wrk, so this shows what nginx gets out of the whole machine.

Target (issue 5): certbroker (own process) >= 25 % of nginx (1 worker).

Each server gets a 1 s warm-up, then `--repeat` timed runs, interleaved (round-robin over
the servers, so a change in the machine's load hits all of them alike); the median run
is kept. Writes its section of docs/benchmarks.md and bench/results/responder.json unless
--no-write (the docs never with --quick). Needs nginx and wrk: `make bench` installs them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port, wait_for_tcp  # noqa: E402
from tests.support.processes import log_tail, terminate  # noqa: E402

from bench.common import write_results, write_section  # noqa: E402
from bench.nginx import children_of, nginx  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- responder:start -->", "<!-- responder:end -->"
HEADING = "## HTTP-01 responder vs nginx (`bench/responder.py`)"
PREFIX = "/.well-known/acme-challenge/"
TARGET = 0.25
THREADS, CONNECTIONS = 1, 32
CLK_TCK = os.sysconf("SC_CLK_TCK")

CB_CHILD = "certbroker, own process"
CB_HERE = "certbroker, in this process"
NGINX_1 = "nginx (1 worker)"
NGINX_AUTO = "nginx (auto)"


def need(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(
            f"bench/responder.py needs `{name}` (Debian package '{package}'), which is not "
            "installed: run `make bench`, which installs them (scripts/ensure-bench-deps.sh)"
        )
    return path


# -- the servers ---------------------------------------------------------------------------


def build_broker(data_dir: Path, port: int, token: str, key_auth: str) -> object:
    """A broker as `serve` builds it, with the token in its store; returns the broker."""
    from certbroker.config import load_settings
    from certbroker.logs import parse_levels, setup_logging
    from certbroker.wiring import build

    settings = load_settings(
        environ={},
        overrides={
            "data_dir": data_dir,
            "http01_port": port,
            "http01_address": "127.0.0.1",
            "log_level": "warning",
        },
    )
    setup_logging(settings.log_level, parse_levels(settings.log_levels))
    broker = build(settings)
    now = dt.datetime.now(dt.UTC)
    broker.repo.put_challenges(None, [(token, key_auth, "bench.example.com", "http-01")], now)
    return broker


def child_main(data_dir: Path, port: int, token: str, key_auth: str) -> int:
    """The responder in a process of its own: start it, say so, wait for SIGTERM."""
    from certbroker.wiring import Broker

    broker = build_broker(data_dir, port, token, key_auth)
    assert isinstance(broker, Broker)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    responder = broker.bind_responder().start()
    try:
        print(f"ready {responder.port}", flush=True)
        while True:
            signal.pause()
    finally:
        responder.stop()


@dataclass
class Server:
    name: str
    port: int
    pids: Callable[[], list[int]]  # whose CPU time is the server's
    detail: str = ""


@contextlib.contextmanager
def certbroker_child(work: Path, token: str, key_auth: str) -> Iterator[Server]:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "responder-child.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(work / "data"), str(port), token, key_auth],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(b"ready"):
            raise SystemExit(f"the responder's process did not start:\n{log_tail(log_path)}")
        wait_for_tcp("127.0.0.1", port, timeout=20)
        yield Server(CB_CHILD, port, lambda: [proc.pid])
    finally:
        terminate(proc)


@contextlib.contextmanager
def certbroker_here(work: Path, token: str, key_auth: str) -> Iterator[Server]:
    from certbroker.wiring import Broker

    port = free_port()
    broker = build_broker(work / "data", port, token, key_auth)
    assert isinstance(broker, Broker)
    responder = broker.bind_responder().start()
    try:
        wait_for_tcp("127.0.0.1", port, timeout=20)
        yield Server(CB_HERE, port, lambda: [os.getpid()])
    finally:
        responder.stop()


@contextlib.contextmanager
def nginx_server(
    binary: str, work: Path, workers: str, token: str, key_auth: str
) -> Iterator[Server]:
    """nginx in the foreground as the current user, its files all under `work`."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        try:
            proc, challenges = stack.enter_context(nginx(binary, work, port, workers))
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        (challenges / token).write_text(key_auth)
        count = len(children_of(proc.pid))
        yield Server(
            NGINX_1 if workers == "1" else NGINX_AUTO,
            port,
            lambda: [proc.pid, *children_of(proc.pid)],
            f"nginx, `worker_processes {workers}` ({count} worker{'s' if count != 1 else ''})",
        )


# -- checking and timing -------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def verify(server: Server, token: str, key_auth: str) -> None:
    status, ctype, body = get(server.port, PREFIX + token)
    if (status, body) != (200, key_auth.encode()) or not ctype.startswith("text/plain"):
        raise SystemExit(f"{server.name}: GET token -> {status} {ctype!r} {body[:80]!r}")
    status, _, _ = get(server.port, PREFIX + "x" + token[1:])
    if status != 404:
        raise SystemExit(f"{server.name}: GET wrong token -> {status}, not 404")


def cpu_of(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def system_cpu() -> tuple[float, float]:
    """CPU seconds this machine's tasks ran so far, and steal (time the hypervisor gave to
    other guests), from /proc/stat. Busy time includes softirq, which the kernel also
    charges to the task it interrupted: loopback's TCP mostly runs there, in the server's
    and wrk's time."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return float(match.group(1)) * scale


@dataclass
class Run:
    rps: float
    requests: int
    latency_avg: float  # seconds
    p50: float
    p99: float
    errors: int  # socket errors and non-2xx/3xx answers
    server_cores: float  # the server's CPU seconds per wall second
    wrk_cores: float
    other_cores: float
    steal_cores: float


def parse_wrk(out: str) -> tuple[float, int, float, float, float, int]:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out, re.M)
        if match is None:
            raise SystemExit(f"cannot read wrk's output ({pattern!r} not found):\n{out}")
        return match

    rps = float(find(r"^Requests/sec:\s+([\d.]+)").group(1))
    requests = int(find(r"^\s+(\d+) requests in ").group(1))
    avg = seconds(find(r"^\s+Latency\s+(\S+)").group(1))
    p50 = seconds(find(r"^\s+50%\s+(\S+)").group(1))
    p99 = seconds(find(r"^\s+99%\s+(\S+)").group(1))
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(n) for n in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return rps, requests, avg, p50, p99, errors


def wrk(binary: str, server: Server, token: str, duration: int) -> Run:
    url = f"http://127.0.0.1:{server.port}{PREFIX}{token}"
    argv = [binary, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", url]
    pids = server.pids()
    cpu0, (busy0, steal0), t0 = cpu_of(pids), system_cpu(), time.monotonic()
    children0 = os.times()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.monotonic() - t0
    cpu1, (busy1, steal1), children1 = cpu_of(pids), system_cpu(), os.times()
    if result.returncode != 0:
        raise SystemExit(f"wrk failed against {server.name}:\n{result.stdout}{result.stderr}")
    rps, requests, avg, p50, p99, errors = parse_wrk(result.stdout)
    server_cpu = cpu1 - cpu0  # in this process: with the little it spent reading wrk's output
    wrk_cpu = (children1.children_user + children1.children_system) - (
        children0.children_user + children0.children_system
    )
    other = max(0.0, (busy1 - busy0) - server_cpu - wrk_cpu)
    return Run(
        rps=rps, requests=requests, latency_avg=avg, p50=p50, p99=p99, errors=errors,
        server_cores=server_cpu / took, wrk_cores=wrk_cpu / took,
        other_cores=other / took, steal_cores=(steal1 - steal0) / took,
    )  # fmt: skip


@dataclass
class Measured:
    server: Server
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> Run:
        ranked = sorted(self.runs, key=lambda r: r.rps)
        return ranked[(len(ranked) - 1) // 2]


# -- the report ----------------------------------------------------------------------------


def tool_version(argv: list[str], pattern: str) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, result.stdout + result.stderr)
    return match.group(1) if match else "unknown"


def deb_version(package: str) -> str:
    return tool_version(["dpkg-query", "-W", "-f=v${Version}", package], r"v(\S+)")


def environment(nginx_bin: str, wrk_bin: str) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": dt.date.today().isoformat(),
        "cores": str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else platform.machine(),
        "memory": f"{mem:.1f} GiB",
        "python": platform.python_version(),
        "certbroker": version("certbroker"),
        "nginx": tool_version([nginx_bin, "-v"], r"nginx/(\S+)"),
        "nginx_deb": deb_version("nginx"),
        "wrk": tool_version([wrk_bin, "-v"], r"^wrk (\S+)"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def report(env: dict[str, str], measured: dict[str, Measured], duration: int, repeat: int) -> str:
    def ms(value: float) -> str:
        return f"{value * 1000:.2f} ms"

    rows = []
    for name in (CB_CHILD, CB_HERE, NGINX_1, NGINX_AUTO):
        m = measured[name]
        r = m.median
        cpu_us = r.server_cores / r.rps * 1e6 if r.rps else 0.0
        runs = "/".join(f"{run.rps:,.0f}" for run in m.runs)
        label = m.server.detail or name
        rows.append(
            f"| {label} | {r.rps:,.0f} | {runs} | {ms(r.latency_avg)} | {ms(r.p50)} | "
            f"{ms(r.p99)} | {sum(run.errors for run in m.runs)} | {r.server_cores:.2f} | "
            f"{cpu_us:.0f} | {r.wrk_cores:.2f} | {r.other_cores:.2f} | {r.steal_cores:.2f} |"
        )
    cb = measured[CB_CHILD].median.rps
    per_request = {
        n: m.median.server_cores / max(m.median.rps, 1e-9) * 1e6 for n, m in measured.items()
    }
    nginx_wrk = measured[NGINX_1].median.wrk_cores
    ratio_1 = cb / measured[NGINX_1].median.rps
    ratio_auto = cb / measured[NGINX_AUTO].median.rps
    ratio_here = measured[CB_HERE].median.rps / measured[NGINX_1].median.rps
    verdict = "met" if ratio_1 >= TARGET else "MISSED"
    runs = f"median of {repeat} interleaved runs" if repeat > 1 else "one run"
    return "\n".join(
        [
            f"### HTTP-01 responder, {env['date']} (`bench/responder.py`)",
            "",
            f"{env['cores']} cores ({env['cpu']}), {env['memory']}, Python {env['python']}, "
            f"certbroker {env['certbroker']}, nginx {env['nginx']} (Debian {env['nginx_deb']}), "
            f"wrk {env['wrk']}; all on loopback, load average before: {env['load']}.",
            "",
            f"`wrk -t{THREADS} -c{CONNECTIONS} -d{duration}s --latency` (keep-alive) on "
            f"`{PREFIX}<token>` after a 1 s warm-up, {runs}. certbroker's responder is one "
            "asyncio event loop speaking HTTP/1.1 with keep-alive, one SQLite look-up per "
            "request (a prepared SELECT on its own sqlite3 connection); nginx serves the key "
            "authorization as a static "
            "file (`default_type text/plain`, `access_log off`, `sendfile on`).",
            "",
            "| server | req/s | all runs | latency avg | p50 | p99 | errors | server CPU, "
            "cores | CPU µs/request | wrk, cores | busy cores, others | steal, cores |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"- target: certbroker (own process) / nginx (1 worker) = {ratio_1:.1%} "
            f"(target >= {TARGET:.0%}: {verdict}); one process against one (certbroker's "
            "Python bound by its GIL, nginx's worker by being one thread)",
            f"- against nginx (auto): {ratio_auto:.1%}; the responder started in the "
            f"benchmark process itself: {ratio_here:.1%} of nginx (1 worker)",
            f"- CPU per request: certbroker's process {per_request[CB_CHILD]:.0f} µs, nginx's "
            f"{per_request[NGINX_1]:.0f} µs. wrk needed {nginx_wrk:.2f} cores against nginx (1 "
            f"worker): on {env['cores']} cores, nginx (auto)'s second worker competes with wrk "
            "for the second core",
            "- busy cores, others: CPU other processes of this machine used meanwhile (the "
            "figures are only comparable when near 0); steal: CPU the hypervisor gave to "
            "other guests",
        ]
    )


def write_json(measured: dict[str, Measured], quick: bool) -> Path:
    figure = {
        "figure": "HTTP-01 responder, requests/s",
        "unit": "req/s",
        "certbroker": round(measured[CB_CHILD].median.rps, 1),
        "peers": {
            NGINX_1: round(measured[NGINX_1].median.rps, 1),
            NGINX_AUTO: round(measured[NGINX_AUTO].median.rps, 1),
        },
        "target": {"peer": NGINX_1, "min_ratio": TARGET},
    }
    return write_results("responder", [figure], quick)


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _, _, data_dir, port, token, key_auth = sys.argv
        return child_main(Path(data_dir), int(port), token, key_auth)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, one each")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per server")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    duration, repeat = (2, 1) if args.quick else (args.duration, args.repeat)
    nginx_bin, wrk_bin = need("nginx", "nginx"), need("wrk", "wrk")
    env = environment(nginx_bin, wrk_bin)
    token = secrets.token_urlsafe(32)  # 43 characters, as a CA's
    key_auth = f"{token}.{secrets.token_urlsafe(32)}"  # token.thumbprint
    with (
        tempfile.TemporaryDirectory(prefix="cb-bench-responder-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        servers = [
            stack.enter_context(certbroker_child(work / "cb", token, key_auth)),
            stack.enter_context(certbroker_here(work / "cb", token, key_auth)),
            stack.enter_context(nginx_server(nginx_bin, work / "nginx-1", "1", token, key_auth)),
            stack.enter_context(
                nginx_server(nginx_bin, work / "nginx-auto", "auto", token, key_auth)
            ),
        ]
        for server in servers:
            verify(server, token, key_auth)
            wrk(wrk_bin, server, token, 1)  # warm-up, not kept
        measured = {s.name: Measured(s) for s in servers}
        for _ in range(repeat):
            for server in servers:
                measured[server.name].runs.append(wrk(wrk_bin, server, token, duration))
        for server in servers:  # still right after the load
            verify(server, token, key_auth)
    section = report(env, measured, duration, repeat)
    print(section)
    if not args.no_write:
        written = write_json(measured, args.quick)
        print(f"wrote {written.relative_to(ROOT)}")
        if not args.quick:
            write_section(START, END, section, HEADING)
            print(f"wrote {DOC.relative_to(ROOT)}")
    return 0  # a missed target is reported, not a failure


if __name__ == "__main__":
    raise SystemExit(main())
