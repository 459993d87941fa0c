"""Several `serve` nodes on one PostgreSQL store, for the tests: a store made with `db
upgrade`, an ACME account and an operator token; nodes started with names and ports of
their own, waited for, and stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from certbroker.store.db import make_engine
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer

LEASE_SECONDS = "10"  # a dead node's orders are taken over after this


@dataclass
class Cluster:
    cli: Cli
    url: str  # the store
    token: str
    account_uri: str
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    apis: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start_node(self, n: int, work: Path, **extra: str) -> None:
        port = free_port()
        env = {
            **self.cli.env,
            "CERTBROKER_DATA_DIR": str(work / f"node{n}"),
            "CERTBROKER_LISTEN": f"127.0.0.1:{port}",
            "CERTBROKER_HTTP01_PORT": str(free_port()),
            "CERTBROKER_WORKER_PROCESSES": "1",
            "CERTBROKER_WORKERS": "4",
            "CERTBROKER_LEASE_SECONDS": LEASE_SECONDS,
            # Names of their own: one host here, so the dead node's PID would otherwise
            # give it away at once; across hosts its leases must run out.
            "CERTBROKER_NODE_NAME": f"node{n}",
            "CERTBROKER_SCHEDULER_INTERVAL": "1",
            **extra,
        }
        log = work / f"node{n}.log"
        with log.open("wb") as out:
            self.nodes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "certbroker", "serve"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        self.apis.append(f"http://127.0.0.1:{port}")
        self.logs.append(log)

    def wait_up(self) -> None:
        deadline = time.monotonic() + 60
        for api, node, log in zip(self.apis, self.nodes, self.logs, strict=True):
            while True:
                try:
                    if httpx.get(api + "/readyz", trust_env=False, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if node.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"node did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        engine = make_engine(self.url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def stop(self) -> None:
        for node in self.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()


def start_cluster(
    tmp_path: Path, postgres: PostgresServer, pebble: PebbleServer
) -> Iterator[Cluster]:
    """A fresh database on `postgres`, brought to the schema, with account "main" at
    `pebble` and an operator token; the nodes started on it are stopped at the end."""
    cli = make_cli(tmp_path / "cli", pebble)
    url = postgres.new_database()
    cli.env["CERTBROKER_DATABASE_URL"] = url
    cli.env["CERTBROKER_MASTER_KEY"] = cli("config", "new-master-key").stdout.strip()
    cli("db", "upgrade")
    account = cli.register()
    token = cli("token", "create", "--name", "load", "--role", "operator").stdout.split()[-1]
    found = Cluster(cli, url, token, account["uri"])
    try:
        yield found
    finally:
        found.stop()
