"""Shared fixtures: a real Pebble per test session (per xdist worker), and a CLI runner
that runs `certbroker` as a separate process against a throwaway data directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer, shared_postgres

# Where the certbroker processes the tests start keep their bytecode (shared by workers).
PYCACHE = os.path.join(tempfile.gettempdir(), f"certbroker-tests-pycache-{os.getuid()}")


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    """Pebble with real HTTP-01 validation and its default badNonce rejection rate."""
    server = start_pebble(tmp_path_factory.mktemp("pebble"), http_port=free_port())
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Cli:
    """Runs `python -m certbroker` with its own data dir, pointed at one Pebble."""

    data_dir: Path
    env: dict[str, str]
    pebble: PebbleServer | None = None
    history: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def __call__(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 180,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        run_env = {**self.env, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "certbroker", *args],
            env=run_env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.history.append(proc)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"certbroker {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self(*args, "--json", **kwargs).stdout)

    def register(self, name: str = "main", *extra: str) -> dict[str, Any]:
        assert self.pebble is not None
        data: dict[str, Any] = self.json(
            "account",
            "register",
            "--directory",
            self.pebble.directory_url,
            "--email",
            f"{name}@example.com",
            "--agree-tos",
            "--ca-bundle",
            str(self.pebble.ca_bundle),
            "--name",
            name,
            *extra,
        )
        return data


def make_cli(data_dir: Path, pebble: PebbleServer | None) -> Cli:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CERTBROKER_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        {
            # Compiled once per run, outside the work tree, instead of in every call.
            "PYTHONPYCACHEPREFIX": PYCACHE,
            "CERTBROKER_DATA_DIR": str(data_dir),
            "CERTBROKER_HTTP01_ADDRESS": "127.0.0.1",
            "CERTBROKER_HTTP01_PORT": str(pebble.http_port if pebble else free_port()),
            "CERTBROKER_LISTEN": f"127.0.0.1:{free_port()}",
            "NO_PROXY": "*",
            "COLUMNS": "200",
        }
    )
    return Cli(data_dir=data_dir, env=env, pebble=pebble)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster per test run, shared by the xdist workers; each
    test that wants one takes a database of its own (`postgres.new_database()`)."""
    with shared_postgres(os.environ.get("PYTEST_XDIST_TESTRUNUID")) as server:
        yield server


@pytest.fixture
def cli(tmp_path: Path, pebble: PebbleServer) -> Cli:
    return make_cli(tmp_path / "data", pebble)


@pytest.fixture
def offline_cli(tmp_path: Path) -> Cli:
    """A CLI with no CA behind it, for validation that must happen before any CA call."""
    return make_cli(tmp_path / "data", None)
