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
from tests.support.acme_peek import post_as_get
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

    def request(self, n: int, alive: list[int], prefix: str = "node") -> None:
        """Request certificate n (`<prefix>-NNN.example.com`) through a live node, as a
        client behind a load balancer would: a node that drops the connection (it was
        killed) or answers 503 (its store is away) is left for the next one, with the same
        Idempotency-Key; a key the dead node held answers 409 until its lease runs out,
        then the retry takes it over."""
        deadline = time.monotonic() + 120
        attempt = 0
        while time.monotonic() < deadline:
            api = self.apis[alive[(n + attempt) % len(alive)]]
            attempt += 1
            try:
                answer = httpx.post(
                    api + "/api/v1/certificates",
                    json={"names": [f"{prefix}-{n:03d}.example.com"]},
                    headers={"Authorization": f"Bearer {self.token}",
                             "Idempotency-Key": f"request-{n}"},
                    trust_env=False,
                    timeout=60,
                )  # fmt: skip
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if answer.status_code == 503 or (
                answer.status_code == 409 and "still running" in answer.text
            ):
                time.sleep(1)
                continue
            assert answer.status_code == 202, answer.text
            return
        raise AssertionError(f"request {n}: no node answered")

    def ca_orders(self, work: Path) -> list[str]:
        """Every order of the account at Pebble but the invalid ones (its `orders` list,
        RFC 8555 7.1.2.1; one page: start Pebble with PEBBLE_WFE_ORDERS_PER_PAGE)."""
        key_file = work / "account.pem"
        if not key_file.exists():
            self.cli("account", "export-key", "main", "--out", str(key_file))
        assert self.cli.pebble is not None
        peek = self.cli.pebble, self.account_uri, key_file
        account = post_as_get(*peek, self.account_uri)
        orders: list[str] = post_as_get(*peek, account["orders"])["orders"]
        return orders

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
