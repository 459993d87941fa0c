"""The API and console over 100,000 certificates (issue 13, "Performance"): the first page
of `GET /api/v1/certificates` and a deep page (keyset cursor) each under 50 ms at the
median, the dashboard under 200 ms, and requests/s of the list endpoint under wrk.

The store is bench/startup.py's, made the same way (`wiring.build`: migrated, master key;
one ACME account; the first certificate issued through the repository, the others
bulk-inserted in its image), with N = 100,000 certificates: one name each
(`siteNNNNN.example.com`), all valid, issued over the last 60 days for 90. A
`certbroker serve` answers on loopback (one worker process; the renewal scheduler looks
once an hour, so it stays quiet), with a viewer token from `certbroker token create`.

Each figure: GETs made one after another by one httpx.Client (keep-alive), 20 untimed
first, then 200 timed (--quick: 50): the median and p95 of the wall time of each, the
answer read in full. What is asked:

* the first page: `?limit=50`, the default sort (by ID);
* a deep page: the cursor of the page after the first N/2 certificates (page 1,000 of
  100,000), found by following `next` (pages of 500: the cursor names the last
  certificate, whatever the page size; checked: no certificate twice, the order kept),
  then `?limit=50&cursor=...` timed;
* the same deep page sorted by `-expires` (latest expiry first);
* `search=` one certificate's name (the store matches names anywhere in them);
* the dashboard: `GET /api/v1/dashboard` (JSON), and the console's dashboard page `/`
  (HTML, its expiry timeline drawn as SVG) after logging in through `/login`.

Then `wrk -t2 -c16 -d15s --latency` (-d5s with --quick) on the first page with the
viewer token: requests/s and latency. The machine has 2 cores and wrk shares them with
the server: requests/s is what the server gets out of what wrk leaves it.

`make bench` runs it; `--write` replaces its section of docs/benchmarks.md and writes
bench/results/api.json. Run: `.venv/bin/python bench/api.py --quick` (N = 10,000, fewer
requests, nothing written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench.*, tests.support

import httpx  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.processes import log_tail, terminate  # noqa: E402

from bench.common import write_results, write_section  # noqa: E402
from bench.nginx import children_of  # noqa: E402
from bench.responder import cpu_of, deb_version, parse_wrk, system_cpu  # noqa: E402
from bench.startup import build_certbroker_store, make_certificates, wait_quiet  # noqa: E402

START, END = "<!-- api:start -->", "<!-- api:end -->"
HEADING = "## API and console (`bench/api.py`)"
LIST = "/api/v1/certificates"
TARGET_PAGE_MS = 50.0  # issue 13: first page and a deep page, median
TARGET_DASHBOARD_MS = 200.0  # issue 13: the dashboard renders
PAGE = 50
WALK_PAGE = 500  # the API's largest page: the walk to the deep cursor takes N/1000 GETs
WARMUP = 20
WRK_THREADS, WRK_CONNECTIONS = 2, 16
ADMIN_PASSWORD = "bench-admin-password-0123456789"


@dataclass
class Timed:
    name: str
    what: str  # the request, for the table
    wall: list[float]  # seconds
    size: int  # bytes of the last answer
    target_ms: float | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.wall) * 1000

    @property
    def p95_ms(self) -> float:
        return statistics.quantiles(self.wall, n=20, method="inclusive")[18] * 1000

    @property
    def verdict(self) -> str:
        if self.target_ms is None:
            return ""
        met = self.median_ms < self.target_ms
        return f"< {self.target_ms:.0f} ms: {'met' if met else 'MISSED'}"


@dataclass
class WrkRun:
    rps: float
    requests: int
    avg_ms: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cores: float
    wrk_cores: float
    other_cores: float


# -- the server ------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "certbroker", *args], env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"certbroker {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def start_serve(env: dict[str, str], log: Path, base: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "certbroker", "serve"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        if serve.poll() is not None:
            raise SystemExit(f"certbroker serve ended:\n{log_tail(log)}")
        try:
            if httpx.get(base + "/api/v1/openapi.json", timeout=2, trust_env=False).is_success:
                return serve
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            terminate(serve)
            raise SystemExit(f"certbroker serve did not answer:\n{log_tail(log)}")
        time.sleep(0.2)


def log_in(base: str) -> httpx.Client | None:
    """A client logged in to the console as admin; None when the console has no /login
    that gives a session (then the dashboard is measured through the API only)."""
    client = httpx.Client(base_url=base, trust_env=False, timeout=30)
    form = client.get("/login")
    if form.status_code != 200:
        client.close()
        return None
    fields = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.text
        )
    }
    fields |= {"name": "admin", "username": "admin", "password": ADMIN_PASSWORD}
    answer = client.post("/login", data=fields, follow_redirects=False)
    if answer.status_code not in (302, 303) or client.get("/").status_code != 200:
        print(f"console log-in refused ({answer.status_code}): measuring the API only",
              file=sys.stderr)  # fmt: skip
        client.close()
        return None
    return client


# -- measuring -------------------------------------------------------------------------


def timed(
    client: httpx.Client, name: str, what: str, path: str, params: dict[str, Any], runs: int,
    target_ms: float | None = None, check: Callable[[httpx.Response], None] | None = None,
) -> Timed:  # fmt: skip
    def get() -> httpx.Response:
        answer = client.get(path, params=params)
        if answer.status_code != 200:
            raise SystemExit(f"GET {path} {params}: {answer.status_code}\n{answer.text[:2000]}")
        return answer

    for _ in range(WARMUP):
        answer = get()
    if check:
        check(answer)
    wall = []
    for _ in range(runs):
        t0 = time.perf_counter()
        answer = get()
        wall.append(time.perf_counter() - t0)
    result = Timed(name, what, wall, len(answer.content), target_ms)
    print(f"{name}: median {result.median_ms:.1f} ms, p95 {result.p95_ms:.1f} ms",
          file=sys.stderr)  # fmt: skip
    return result


def walk(client: httpx.Client, sort: str, skip: int) -> tuple[str, float]:
    """The cursor after the first `skip` certificates in `sort` order, by following `next`;
    checks that no certificate comes twice and that the order holds. Returns it and the
    seconds the walk took."""
    seen: set[int] = set()
    cursor: str | None = None
    last: tuple[Any, int] | None = None
    key = sort.removeprefix("-")
    descending = sort.startswith("-")
    t0 = time.perf_counter()
    while len(seen) < skip:
        params: dict[str, Any] = {"limit": min(WALK_PAGE, skip - len(seen)), "sort": sort}
        if cursor:
            params["cursor"] = cursor
        page = client.get(LIST, params=params)
        page.raise_for_status()
        data = page.json()
        for item in data["items"]:
            if item["id"] in seen:
                raise SystemExit(f"sort {sort}: certificate {item['id']} came twice")
            seen.add(item["id"])
            here = (item["not_after"] if key == "expires" else item["id"], item["id"])
            if last is not None and (here < last if not descending else here > last):
                raise SystemExit(f"sort {sort}: {here} came after {last}")
            last = here
        cursor = data["next"]
        if cursor is None:
            raise SystemExit(f"sort {sort}: the pages ended after {len(seen)} certificates")
    return cursor or "", time.perf_counter() - t0


def wrk(binary: str, url: str, token: str, seconds: int, pids: list[int]) -> WrkRun:
    argv = [
        binary, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency",
        "-H", f"Authorization: Bearer {token}", url,
    ]  # fmt: skip
    cpu0, (busy0, _), t0, children0 = cpu_of(pids), system_cpu(), time.monotonic(), os.times()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.monotonic() - t0
    cpu1, (busy1, _), children1 = cpu_of(pids), system_cpu(), os.times()
    if result.returncode != 0:
        raise SystemExit(f"wrk failed:\n{result.stdout}{result.stderr}")
    print(result.stdout, file=sys.stderr)
    rps, requests, avg, p50, p99, errors = parse_wrk(result.stdout)
    server_cpu = cpu1 - cpu0
    wrk_cpu = (children1.children_user + children1.children_system) - (
        children0.children_user + children0.children_system
    )
    other = max(0.0, (busy1 - busy0) - server_cpu - wrk_cpu)
    return WrkRun(
        rps=rps, requests=requests, avg_ms=avg * 1000, p50_ms=p50 * 1000, p99_ms=p99 * 1000,
        errors=errors, server_cores=server_cpu / took, wrk_cores=wrk_cpu / took,
        other_cores=other / took,
    )  # fmt: skip


# -- the report ------------------------------------------------------------------------


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({model.group(1).strip() if model else platform.machine()}), "
        f"{mem:.1f} GiB, Python {platform.python_version()}, certbroker {version('certbroker')}, "
        f"SQLite {__import__('sqlite3').sqlite_version}, uvicorn {version('uvicorn')}, "
        f"wrk {deb_version('wrk')}"
    )


def section(
    n: int, runs: int, deep: int, times: list[Timed], load: WrkRun, info: dict[str, str]
) -> str:
    lines = [
        f"### {dt.date.today().isoformat()}, N={n:,}",
        "",
        f"{info['machine']}. Store {info['store_mib']} MiB, built in {info['build_s']} s "
        f"(not timed); all on loopback, load average before: {info['load']}. "
        f"{WARMUP} untimed GETs, then {runs} timed, one after another on one keep-alive "
        "connection (httpx); the wall time of each, the answer read in full.",
        "",
        "| figure | request | median | p95 | answer | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for t in times:
        lines.append(
            f"| {t.name} | `{t.what}` | {t.median_ms:.1f} ms | {t.p95_ms:.1f} ms | "
            f"{t.size / 1024:.0f} KiB | {t.verdict} |"
        )
    lines += [
        "",
        f"`wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{info['wrk_s']}s --latency` with a "
        f"viewer token on `{LIST}?limit={PAGE}` (the first page):",
        "",
        "| req/s | requests | latency avg | p50 | p99 | errors | server, cores | "
        "wrk, cores | others, cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {load.rps:,.0f} | {load.requests:,} | {load.avg_ms:.1f} ms | {load.p50_ms:.1f} ms | "
        f"{load.p99_ms:.1f} ms | {load.errors} | {load.server_cores:.2f} | "
        f"{load.wrk_cores:.2f} | {load.other_cores:.2f} |",
        "",
        f"- the deep pages start after the first {deep:,} certificates (page "
        f"{deep // PAGE + 1:,} in pages of {PAGE}); their cursors were found by following `next` "
        f"({info['walks']}), no certificate twice, the order kept",
        f"- the machine has {os.cpu_count()} cores and wrk runs on them too: requests/s is "
        "what the server (one Python process: uvicorn's event loop, the endpoint in its "
        "thread pool, bound by the GIL) gets out of the CPU wrk leaves it",
    ]
    if info.get("console"):
        lines.append(f"- {info['console']}")
    for note in info.get("notes", "").split("\n"):
        if note:
            lines.append(f"- {note}")
    return "\n".join(lines)


def figures(times: list[Timed], load: WrkRun, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in times:
        figure: dict[str, Any] = {
            "figure": f"{t.name}, {n:,} certificates (median)",
            "unit": "ms",
            "certbroker": round(t.median_ms, 2),
        }
        if t.target_ms is not None:
            figure["target"] = {"max": t.target_ms}
        out.append(figure)
    out.append(
        {
            "figure": f"list endpoint under wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, "
            f"viewer token, {n:,} certificates",
            "unit": "req/s",
            "certbroker": round(load.rps, 1),
        }
    )
    return out


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="certificates (default 100,000; --quick: 10,000)")
    parser.add_argument("--quick", action="store_true", help="10,000 certificates, 50 GETs")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the server's store; no wrk")
    args = parser.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    runs = 50 if args.quick else 200
    wrk_s = 5 if args.quick else 15
    deep = n // 2
    wrk_bin = shutil.which("wrk")
    if wrk_bin is None:
        raise SystemExit("wrk is missing: run scripts/ensure-bench-deps.sh (make bench does)")
    here = Path.cwd()
    info: dict[str, str] = {"machine": machine(), "wrk_s": str(wrk_s)}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="certbroker-bench-api-") as tmp:
        base_dir = Path(tmp)
        os.chdir(base_dir)  # no ./certbroker.toml of the checkout is read
        serve = None
        try:
            t0 = time.perf_counter()
            data_dir = base_dir / "data"
            build_certbroker_store(data_dir, make_certificates(n))
            info["build_s"] = f"{time.perf_counter() - t0:.0f}"
            info["store_mib"] = f"{(data_dir / 'certbroker.db').stat().st_size / 2**20:.0f}"
            print(f"store of {n:,} certificates built in {info['build_s']} s", file=sys.stderr)
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
            env.update(
                CERTBROKER_DATA_DIR=str(data_dir), CERTBROKER_LISTEN=f"127.0.0.1:{port}",
                CERTBROKER_HTTP01_PORT=str(free_port()), CERTBROKER_HTTP01_ADDRESS="127.0.0.1",
                CERTBROKER_ADMIN_PASSWORD=ADMIN_PASSWORD, CERTBROKER_WORKER_PROCESSES="1",
                CERTBROKER_SCHEDULER_INTERVAL="3600", CERTBROKER_LOG_LEVEL="warning",
            )  # fmt: skip
            token = cli(env, "token", "create", "--name", "bench", "--role", "viewer")
            token = token.strip().splitlines()[-1].strip()
            base = f"http://127.0.0.1:{port}"
            serve = start_serve(env, base_dir / "serve.log", base)
            viewer = httpx.Client(
                base_url=base, trust_env=False, timeout=60,
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            first = viewer.get(LIST, params={"limit": 1}).json()["items"][0]
            walks = []
            cursor_id, took = walk(viewer, "id", deep)
            walks.append(f"by ID: {deep // WALK_PAGE} GETs in {took:.1f} s")
            cursor_exp, took = walk(viewer, "-expires", deep)
            walks.append(f"by `-expires`: {deep // WALK_PAGE} GETs in {took:.1f} s")
            info["walks"] = "; ".join(walks)
            quiet = wait_quiet(5 if args.quick else 120)
            info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            info["load"] += f"; other processes kept {quiet:.2f} cores busy just before"

            def deep_by_id(answer: httpx.Response) -> None:
                got = answer.json()["items"][0]["id"]
                if got != first["id"] + deep:
                    raise SystemExit(f"the deep page starts at {got}, not {first['id'] + deep}")

            wanted = f"site{n // 3:05d}.example.com"

            def one_found(answer: httpx.Response) -> None:
                items = answer.json()["items"]
                if [i["names"] for i in items] != [[wanted]]:
                    raise SystemExit(f"search {wanted}: {items!r}")

            def many(answer: httpx.Response) -> None:
                if len(answer.json()["items"]) != PAGE:
                    raise SystemExit("a page came back short")

            page_n = deep // PAGE + 1
            times = [
                timed(viewer, "first page", f"{LIST}?limit={PAGE}", LIST, {"limit": PAGE},
                      runs, TARGET_PAGE_MS, many),
                timed(viewer, f"deep page ({page_n:,}), by ID",
                      f"{LIST}?limit={PAGE}&cursor=...", LIST,
                      {"limit": PAGE, "cursor": cursor_id}, runs, TARGET_PAGE_MS, deep_by_id),
                timed(viewer, f"deep page ({page_n:,}), latest expiry first",
                      f"{LIST}?limit={PAGE}&sort=-expires&cursor=...", LIST,
                      {"limit": PAGE, "sort": "-expires", "cursor": cursor_exp}, runs,
                      TARGET_PAGE_MS, many),
                timed(viewer, "search, one certificate found",
                      f"{LIST}?limit={PAGE}&search={wanted}", LIST,
                      {"limit": PAGE, "search": wanted}, runs, None, one_found),
            ]  # fmt: skip
            api_dashboard = timed(viewer, "dashboard, API (JSON)", "/api/v1/dashboard",
                                  "/api/v1/dashboard", {}, runs, TARGET_DASHBOARD_MS)  # fmt: skip
            times.append(api_dashboard)
            console = log_in(base)
            if console is None:
                info["console"] = (
                    "the console's dashboard page could not be measured (no log-in), so the "
                    "target applies to the API's dashboard"
                )
            else:
                try:
                    times.append(
                        timed(console, "dashboard, console (HTML)", "/", "/", {}, runs,
                              TARGET_DASHBOARD_MS)
                    )  # fmt: skip
                finally:
                    console.close()
                api_dashboard.target_ms = None  # the target is the console's page
                info["console"] = (
                    "the dashboard's target applies to the console's page (logged in as "
                    "admin, session cookie); the API's JSON is what it is made from"
                )
            viewer.close()
            pids = [serve.pid, *children_of(serve.pid)]
            load = wrk(wrk_bin, f"{base}{LIST}?limit={PAGE}", token, wrk_s, pids)
            if load.errors:
                notes.append(f"wrk counted {load.errors} errors (socket errors or non-2xx)")
            info["notes"] = "\n".join(notes)
            if args.keep:
                kept = Path(tempfile.mkdtemp(prefix="certbroker-bench-api-kept-"))
                shutil.copytree(data_dir, kept / "data")
                print(f"kept the store in {kept / 'data'}", file=sys.stderr)
        finally:
            terminate(serve)
            os.chdir(here)
    text = section(n, runs, deep, times, load, info)
    print(text)
    out = write_results("api", figures(times, load, n), quick=args.quick)
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
    if args.write and not args.quick:
        write_section(START, END, text, f"{HEADING}\n\n{ABOUT.strip()}")
        print("wrote docs/benchmarks.md", file=sys.stderr)
    return 0  # a missed target is reported in the section, not as a failure


ABOUT = """\
What runs: bench/startup.py's store, made as certbroker makes it, with N = 100,000
certificates (one name each, all valid, issued over the last 60 days for 90), behind a
`certbroker serve` on loopback (one worker process, the scheduler quiet). Each figure:
20 untimed GETs, then 200 timed one after another on one keep-alive connection (the
median and p95 of their wall time): the first page of `GET /api/v1/certificates`, a deep
page (after N/2 certificates, its cursor found by following `next`) by ID and by
`-expires`, a `search`, `GET /api/v1/dashboard` and the console's dashboard page. Then
wrk on the first page with a viewer token. Targets (issue 13): the first and the deep
page under 50 ms at the median, the dashboard under 200 ms. Run it: `make bench`, or
`.venv/bin/python bench/api.py --quick` (N = 10,000, nothing written).
"""


if __name__ == "__main__":
    sys.exit(main())
