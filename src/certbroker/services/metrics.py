"""`/metrics` and `/readyz`: what a scrape reports, from the store, so every
node reports the same values; and whether this process can serve."""

from __future__ import annotations

import atexit
import bisect
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from certbroker.domain.errors import StoreUnavailable
from certbroker.domain.models import CertificateStatus
from certbroker.services.common import ServiceContext
from certbroker.services.outage import store_outage

if TYPE_CHECKING:
    from certbroker.store.repository import Repository

log = logging.getLogger("certbroker.metrics")

READY = {CertificateStatus.VALID}
NOT_READY = {CertificateStatus.FAILED, CertificateStatus.EXPIRED, CertificateStatus.REVOKED}


@dataclass(frozen=True)
class CertificateMetric:
    id: int
    name: str  # its first name, as cert-manager labels by the Certificate's name
    status: CertificateStatus  # as of now (an expired one says so)
    not_after: datetime | None
    renew_at: datetime | None

    @property
    def condition(self) -> str:
        """cert-manager's Ready condition: True, False or Unknown (not issued yet)."""
        if self.status in READY:
            return "True"
        return "False" if self.status in NOT_READY else "Unknown"


@dataclass(frozen=True)
class Snapshot:
    certificates: list[CertificateMetric]
    orders: list[tuple[str, str, int]]  # (purpose, result, count)
    failures: Counter[str]  # problem type -> failed attempts
    queue_depth: int
    alarms: int
    # (channel, result) -> count: mails sent, failed tries, dead; webhooks likewise
    notifications: dict[tuple[str, str], int]
    # (host, method, status, count, sum of seconds, count per bucket, the last +Inf)
    acme_requests: list[tuple[str, str, str, int, float, list[int]]]

    def by_status(self) -> Counter[str]:
        found: Counter[str] = Counter({s.value: 0 for s in CertificateStatus})
        found.update(c.status.value for c in self.certificates)
        return found


class MetricsService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    def snapshot(self) -> Snapshot:
        now = self.ctx.clock()
        found = []
        for row in self.repo.metric_certificates():
            status = CertificateStatus(row.status)
            if status is CertificateStatus.VALID and row.not_after and row.not_after <= now:
                status = CertificateStatus.EXPIRED
            name = json.loads(row.names)[0]
            found.append(CertificateMetric(row.id, name, status, row.not_after, row.renew_at))
        return Snapshot(
            certificates=found,
            orders=self.repo.metric_orders(),
            failures=self.repo.metric_failures(),
            queue_depth=self.repo.metric_queue_depth(),
            # A full store's alarm lives in the process (services/browsing.py alarms).
            alarms=self.repo.metric_alarms() + (self.repo.space.full is not None),
            notifications=self.notifications(),
            acme_requests=self.repo.acme_request_stats(),
        )

    def notifications(self) -> dict[tuple[str, str], int]:
        """Mails by result: `sent`, `failed` (every try that failed, of mails sent later
        too), `dead` (given up after a day); webhook deliveries: `delivered`, `failed`
        (attempts), `dead`. Counted from the store: every node reports the same."""
        mails = self.repo.mail_counts()
        found = {
            ("mail", "sent"): mails.get("sent", 0),
            ("mail", "failed"): mails.get("failed_attempts", 0),
            ("mail", "dead"): mails.get("dead", 0),
        }
        hooks = self.repo.webhook_delivery_counts()
        found.update({("webhook", r): hooks.get(r, 0) for r in ("delivered", "failed", "dead")})
        return found

    def store_problems(self) -> list[str]:
        """What keeps the store from serving: unreachable, a schema other than this
        code's, or writes refused for lack of space (empty: ready)."""
        from certbroker.store.db import HEAD_REVISION, current_revision

        try:
            revision = current_revision(self.repo.engine)
        except StoreUnavailable as exc:  # serve waits it out (services/outage.py)
            return [f"database unreachable at {exc.where} ({exc.reason})"]
        except Exception as exc:  # any failure to read it means not ready
            return [f"the store cannot be read: {exc}"]
        if revision != HEAD_REVISION:
            return [f"the store's schema is {revision}, this code's {HEAD_REVISION}"]
        self.repo.space.settle()  # room again? (a probe, while writes are being refused)
        full = self.repo.space.full
        if full is not None:  # reads go on, but nothing new can be stored
            return [
                f"disk full: the store {self.repo.space.where} refuses writes for lack of "
                f"space since {full.since:%Y-%m-%d %H:%M:%S} UTC ({full.reason})"
            ]
        return []


# cert-manager's buckets for its ACME client request histogram (prometheus' defaults).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestDurations:
    """`ports.RequestTimer`: ACME request durations gathered in this process and added to
    the store's histogram every `every` seconds (and when the process ends), so a scrape
    of any node shows every process's and node's requests."""

    def __init__(self, repo: Repository, every: float = 10.0) -> None:
        self.repo = repo
        self.every = every
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], tuple[int, float, list[int]]] = {}
        self._last = time.monotonic()
        atexit.register(self.flush)

    def observe(self, host: str, method: str, status: str, seconds: float) -> None:
        index = bisect.bisect_left(DURATION_BUCKETS, seconds)  # len(): +Inf
        with self._lock:
            count, total, buckets = self._pending.get(
                (host, method, status), (0, 0.0, [0] * (len(DURATION_BUCKETS) + 1))
            )
            buckets[index] += 1
            self._pending[(host, method, status)] = (count + 1, total + seconds, buckets)
            due = time.monotonic() - self._last >= self.every
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last = time.monotonic()
        if not pending:
            return
        try:
            self.repo.add_acme_request_stats(pending)
        except StoreUnavailable as exc:  # these figures are lost, the requests are not
            store_outage.lost(exc)
        except Exception:  # these figures are lost, the requests are not
            log.warning("could not add %d ACME request timings to the store", len(pending))
