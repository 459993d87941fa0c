"""`/metrics`, `/healthz` and `/readyz` of a running `serve` (issue 16), with a
certificate issued by Pebble for real: the scrape parses with prometheus-client's parser
(and `promtool check metrics` where Debian's prometheus package is installed), its expiry
series is the stored certificate's not-after, and /readyz says when the store's schema is
not this code's."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from certbroker.store.db import HEAD_REVISION
from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.ports import free_port
from tests.support.serve import api_url, start_api, stop_serve

TOKEN = "metrics-token-0123456789"


@dataclass
class Site:
    cli: Cli
    serve: subprocess.Popen[str]

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(api_url(self.cli) + path, headers=headers, trust_env=False, timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("metrics") / "data", pebble)
    cli.register()
    cli("cert", "request", "metrics.example.com", "--wait")
    serve = start_api(cli, CERTBROKER_METRICS_TOKEN=TOKEN)
    try:
        yield Site(cli, serve)
    finally:
        stop_serve(serve)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _one(samples: dict[Any, float], metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_metrics_parse_and_the_expiry_is_the_stored_not_after(site: Site) -> None:
    assert site.get("/metrics").status_code == 401
    assert site.get("/metrics", authorization="Bearer wrong").status_code == 401
    answer = site.get("/metrics", authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(answer.text)
    shown = site.cli.json("cert", "show", "1")
    labels = {"id": "1", "name": "metrics.example.com"}
    not_after = datetime.fromisoformat(shown["not_after"]).timestamp()
    assert _one(samples, "certbroker_certificate_expiration_timestamp_seconds", **labels) == (
        not_after
    )
    renew_at = datetime.fromisoformat(shown["renew_at"]).timestamp()
    assert _one(samples, "certbroker_certificate_renewal_timestamp_seconds", **labels) == renew_at
    ready = "certbroker_certificate_ready_status"
    assert _one(samples, ready, condition="True", **labels) == 1.0
    assert _one(samples, ready, condition="False", **labels) == 0.0
    assert _one(samples, "certbroker_certificates", status="valid") == 1.0
    assert _one(samples, "certbroker_certificates", status="failed") == 0.0
    assert _one(samples, "certbroker_orders_total", purpose="issue", result="valid") == 1.0
    assert _one(samples, "certbroker_queue_depth") == 0.0
    assert _one(samples, "certbroker_alarms_active") == 0.0
    assert _one(samples, "certbroker_notifications_total", channel="mail", result="sent") == 0.0
    # The CLI process that requested the certificate timed its requests to Pebble and added
    # them to the store when it ended: the server reports them.
    host = urlsplit(site.cli.pebble.directory_url).hostname  # type: ignore[union-attr]
    duration = "certbroker_acme_client_request_duration_seconds"
    posts = _one(samples, f"{duration}_count", host=str(host), method="POST", status="201")
    assert posts >= 2  # at least the new order and the finalization... (account: 201 too)
    assert _one(samples, f"{duration}_bucket", host=str(host), method="POST", status="201",
                le="+Inf") == posts  # fmt: skip
    assert _one(samples, f"{duration}_sum", host=str(host), method="POST", status="201") > 0

    # A renewal moves the figures: a second order, the same certificate, a later expiry.
    site.cli("cert", "renew", "1")
    again = _samples(site.get("/metrics", authorization=f"Bearer {TOKEN}").text)
    assert _one(again, "certbroker_orders_total", purpose="renew", result="valid") == 1.0
    assert _one(again, f"{duration}_count", host=str(host), method="POST", status="200") > 0
    renewed = datetime.fromisoformat(site.cli.json("cert", "show", "1")["not_after"])
    assert _one(again, "certbroker_certificate_expiration_timestamp_seconds", **labels) == (
        renewed.timestamp()
    )

    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package, when the machine has it
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=answer.text, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_health_and_readiness(site: Site) -> None:
    assert site.get("/healthz").json() == {"status": "ok"}
    ready = site.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "problems": []}, (
        ready.text
    )

    store = site.cli.data_dir / "certbroker.db"
    with sqlite3.connect(store) as db:  # a node left behind by a newer one's migration
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    try:
        not_ready = site.get("/readyz")
        assert not_ready.status_code == 503
        (problem,) = not_ready.json()["problems"]
        assert "schema is 9999" in problem and HEAD_REVISION in problem
        assert site.get("/healthz").status_code == 200  # up, though not ready
    finally:
        with sqlite3.connect(store) as db:
            db.execute("UPDATE alembic_version SET version_num = ?", (HEAD_REVISION,))
    assert site.get("/readyz").status_code == 200


def test_serve_refuses_to_offer_metrics_to_other_machines_without_a_token(
    offline_cli: Cli,
) -> None:
    """Before anything starts: one line, exit 2 (issue 24, finding 9)."""
    refused = offline_cli("serve", check=False, timeout=60,
                          env={"CERTBROKER_LISTEN": f"0.0.0.0:{free_port()}"})  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error: listen 0.0.0.0:")
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "CERTBROKER_METRICS_TOKEN" in refused.stderr
