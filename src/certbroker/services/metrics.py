"""`/metrics` and `/readyz` (issue 16): what a scrape reports, from the store, so every
node reports the same values; and whether this process can serve."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from certbroker.domain.models import CertificateStatus
from certbroker.services.common import ServiceContext

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
            alarms=self.repo.metric_alarms(),
        )

    def store_problems(self) -> list[str]:
        """What keeps the store from serving: unreachable, or a schema other than this
        code's (empty: ready)."""
        from certbroker.store.db import HEAD_REVISION, current_revision

        try:
            revision = current_revision(self.repo.engine)
        except Exception as exc:  # any failure to read it means not ready
            return [f"the store cannot be read: {exc}"]
        if revision != HEAD_REVISION:
            return [f"the store's schema is {revision}, this code's {HEAD_REVISION}"]
        return []
