"""`/healthz`, `/readyz` and `/metrics`, for load balancers, orchestrators and
Prometheus. `/metrics` is in Prometheus's text format, its names after cert-manager's;
every figure is read from the store at the scrape, so every node reports the same."""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from certbroker.domain.errors import NotAuthenticated
from certbroker.services.metrics import DURATION_BUCKETS
from certbroker.wiring import Broker

router = APIRouter(tags=["health and metrics"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONDITIONS = ("True", "False", "Unknown")


class StoreCollector(Collector):
    """The figures of one scrape, from one snapshot of the store."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        snap = self.broker.metrics.snapshot()
        expires = GaugeMetricFamily(
            "certbroker_certificate_expiration_timestamp_seconds",
            "When the certificate expires (not-after), Unix time.",
            labels=["id", "name"],
        )
        renews = GaugeMetricFamily(
            "certbroker_certificate_renewal_timestamp_seconds",
            "When the certificate is to be renewed, Unix time.",
            labels=["id", "name"],
        )
        ready = GaugeMetricFamily(
            "certbroker_certificate_ready_status",
            "1 for the certificate's Ready condition (True: valid; False: failed, expired or "
            "revoked; Unknown: not issued yet), 0 for the others.",
            labels=["id", "name", "condition"],
        )
        for cert in snap.certificates:
            labels = [str(cert.id), cert.name]
            if cert.not_after is not None:
                expires.add_metric(labels, cert.not_after.timestamp())
            if cert.renew_at is not None:
                renews.add_metric(labels, cert.renew_at.timestamp())
            for condition in CONDITIONS:
                ready.add_metric([*labels, condition], 1.0 if cert.condition == condition else 0.0)
        yield expires
        yield renews
        yield ready
        counts = GaugeMetricFamily(
            "certbroker_certificates", "Certificates by status.", labels=["status"]
        )
        for status, count in sorted(snap.by_status().items()):
            counts.add_metric([status], count)
        yield counts
        orders = CounterMetricFamily(
            "certbroker_orders", "Orders that ended, by purpose and result.",
            labels=["purpose", "result"],
        )  # fmt: skip
        for purpose, result, count in snap.orders:
            orders.add_metric([purpose, result], count)
        yield orders
        failures = CounterMetricFamily(
            "certbroker_order_failures", "Failed attempts, by the CA's problem type.",
            labels=["problem"],
        )  # fmt: skip
        for problem, count in sorted(snap.failures.items()):
            failures.add_metric([problem], count)
        yield failures
        notifications = CounterMetricFamily(
            "certbroker_notifications", "Mails and webhook deliveries, by channel and result.",
            labels=["channel", "result"],
        )  # fmt: skip
        for (channel, result), count in sorted(snap.notifications.items()):
            notifications.add_metric([channel, result], count)
        yield notifications
        durations = HistogramMetricFamily(
            "certbroker_acme_client_request_duration_seconds",
            "How long requests to ACME CAs took, by host, method and status, every node's.",
            labels=["host", "method", "status"],
        )
        for host, method, status, _count, total, per_bucket in snap.acme_requests:
            cumulative, buckets = 0, []
            for bound, n in zip((*DURATION_BUCKETS, math.inf), per_bucket, strict=False):
                cumulative += n
                buckets.append(("+Inf" if bound == math.inf else f"{bound:g}", cumulative))
            durations.add_metric([host, method, status], buckets, total)
        yield durations
        yield GaugeMetricFamily(
            "certbroker_queue_depth", "Orders waiting or under way.", value=snap.queue_depth
        )
        yield GaugeMetricFamily(
            "certbroker_alarms_active",
            "Active alarms: failing certificates, push deployments and agents' installs.",
            value=snap.alarms,
        )


def _scrape(broker: Broker) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(broker))
    return generate_latest(registry)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format. With `metrics_token` set (CERTBROKER_METRICS_TOKEN), only
    for `Authorization: Bearer <that token>`."""
    broker: Broker = request.app.state.broker
    wanted = broker.settings.metrics_token
    if wanted:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), wanted):
            raise NotAuthenticated("/metrics needs 'Authorization: Bearer <metrics_token>'")
    body = await run_in_threadpool(_scrape, broker)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/healthz", response_model=dict[str, Any])
async def healthz() -> dict[str, Any]:
    """The process is up and answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=dict[str, Any])
async def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the store answers with this code's schema, and the workers run
    (`serve`). 503 with what is wrong otherwise."""
    broker: Broker = request.app.state.broker
    problems = await run_in_threadpool(broker.metrics.store_problems)
    workers = getattr(request.app.state, "workers_problems", None)
    if workers is not None:
        problems += workers()
    status = 503 if problems else 200
    return JSONResponse({"status": "ready" if not problems else "not ready",
                         "problems": problems}, status_code=status)  # fmt: skip
