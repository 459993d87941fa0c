"""schemathesis against a running `certbroker serve` and its own OpenAPI document: no
request it makes, valid or not, gets a 5xx, and every answer matches the schema (status
code documented, content type, body).

The stream of an order's progress is left out: it stays open while the order runs (it
has its own test in test_api.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.serve import api_url, start_api, stop_serve

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


@pytest.mark.timeout(900)
def test_no_request_gets_a_5xx_and_every_answer_matches_the_schema(
    cli: Cli, tmp_path: Path
) -> None:
    cli.register()
    cli("cert", "request", "schema.example.com")
    admin = cli("token", "create", "--name", "schemathesis", "--role", "admin").stdout
    secret = admin.strip().splitlines()[-1]
    serve = start_api(cli, CERTBROKER_ADMIN_PASSWORD="schema-test-password")
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                api_url(cli) + "/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {secret}",
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--seed",
                "20261130",
                "--workers",
                "2",
                "--exclude-path-regex",
                "/progress/stream$",
                "--generation-database",
                "none",
                "--no-color",
                "--request-timeout",
                "60",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=840,
            cwd=tmp_path,
            check=False,
        )
    finally:
        log = stop_serve(serve)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Traceback" not in log, log[-5000:]
