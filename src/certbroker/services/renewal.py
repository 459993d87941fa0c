"""Renewal: renew one certificate now, queue the due ones, and the scheduler that does
the latter in `serve`.

A renewal is an order like any other (the same state machine, leases and workers); it
differs only in what happens when the new certificate arrives: the old one moves into
the history (see store/renewals.py). The scheduler only queues orders, in the store, so
any number of `serve` processes or nodes can run it side by side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime

from cryptography import x509

from certbroker.domain.errors import StoreUnavailable, UsageError
from certbroker.domain.models import Certificate, CertificateStatus, Order
from certbroker.ports import ChallengeSolver
from certbroker.services import audit
from certbroker.services.common import ServiceContext
from certbroker.services.issuance import IssuanceService
from certbroker.services.leases import lease
from certbroker.services.order_run import client_refusal
from certbroker.services.outage import store_outage
from certbroker.services.planning import ARI_RETRY_AFTER_ERROR, RenewalPlanner

log = logging.getLogger("certbroker.scheduler")

BATCH = 500


class RenewalService:
    def __init__(
        self, ctx: ServiceContext, issuance: IssuanceService, planner: RenewalPlanner
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.issuance = issuance
        self.planner = planner

    def renew(self, cert_id: int, lease_owner: str | None = None) -> Order:
        """An order that renews the certificate now, due or not (or retries a failed one).

        Returns the certificate's active order when it already has one. A client's
        certificate its client may no longer have is refused at once, saying
        why: its order would be stopped before the CA anyway.
        """
        cert = self.repo.get_certificate(cert_id)
        refusal = client_refusal(self.repo, cert)
        if refusal is not None:
            raise UsageError(refusal.refused(cert))
        active = self.repo.active_order_of(cert_id)
        if active is not None:
            return active
        if cert.cert_pem is None:  # never issued: a renewal is a retry of the request
            order = self.issuance.new_order_for(cert_id, lease_owner)
        else:
            if cert.status not in (CertificateStatus.VALID, CertificateStatus.REVOKED):
                raise UsageError(
                    f"certificate {cert_id} is {cert.status.value}; it cannot be renewed"
                )
            now = self.ctx.clock()
            order = self.repo.add_renewal_order(cert_id, now, lease_owner, now + lease())
        audit.record(
            self.ctx,
            "certificate.renew",
            "certificate",
            cert_id,
            {"names": list(cert.names), "order_id": order.id, "retry": cert.cert_pem is None},
        )
        return order

    def refresh_renewal_info(self, limit: int = 100) -> int:
        """Ask the CA again for the ARI window of certificates whose Retry-After has
        passed, and move their renewal accordingly. Returns how many were asked."""
        now = self.ctx.clock()
        due = self.repo.ari_due(now, limit)
        for cert in due:
            try:
                self._refresh_one(cert, now)
            except StoreUnavailable:
                raise  # not this certificate's fault: the scheduler waits the outage out
            except Exception as exc:  # one bad row must not keep the others from their turn
                log.warning(
                    "certificate %d: asking for renewal information failed: %s", cert.id, exc
                )
                self.repo.postpone_ari_check(cert.id, now + ARI_RETRY_AFTER_ERROR)
        return len(due)

    def _refresh_one(self, cert: Certificate, now: datetime) -> None:
        if cert.cert_pem is None or cert.not_before is None or cert.not_after is None:
            self.repo.postpone_ari_check(cert.id, None)
            return
        account = self.repo.get_account(cert.account_id)
        leaf = x509.load_pem_x509_certificate(cert.cert_pem.encode())
        window, next_check = self.planner.ask_window(self.ctx.ca_for(account), leaf, now)
        plan = self.planner.replan(cert, window, now)
        if plan.renew_at != cert.renew_at and window is not None:
            log.info(
                "certificate %d: the CA's window moves renewal to %s", cert.id, plan.describe()
            )
        self.repo.set_renewal_plan(cert.id, plan, next_check, now)

    def queue_due(self) -> list[int]:
        """Queue a renewal for every certificate that is due, and the next order of every
        failing certificate whose next try has come; returns their IDs."""
        queued: list[int] = []
        for enqueue in (self.repo.enqueue_renewals, self.repo.enqueue_retries):
            while True:
                batch = enqueue(self.ctx.clock(), BATCH)
                queued += batch
                if len(batch) < BATCH:
                    break
        if queued and not audit.by_system():  # `cert renew --due`; not the scheduler's
            audit.record(
                self.ctx, "certificate.renew-due", "certificate", None, {"certificates": queued}
            )
        return queued

    def disable(self, cert_id: int) -> Certificate:
        """A person stops the certificate's retries and renewal (an order already under
        way finishes)."""
        cert = self.repo.get_certificate(cert_id)
        self.repo.set_disabled(cert_id, True, self.ctx.clock(), None)
        audit.record(
            self.ctx,
            "certificate.disable",
            "certificate",
            cert_id,
            {"names": list(cert.names), "disabled": [cert.disabled, True]},
        )
        return self.repo.get_certificate(cert_id)

    def enable(self, cert_id: int) -> Certificate:
        """Retries and renewal again; a certificate that is failing is tried at once."""
        cert = self.repo.get_certificate(cert_id)
        failing = cert.alarm_since is not None or cert.status is CertificateStatus.FAILED
        now = self.ctx.clock()
        self.repo.set_disabled(cert_id, False, now, now if failing else None)
        audit.record(
            self.ctx,
            "certificate.enable",
            "certificate",
            cert_id,
            {"names": list(cert.names), "disabled": [cert.disabled, False]},
        )
        return self.repo.get_certificate(cert_id)

    def queue_all(self) -> list[int]:
        """Queue a renewal for every valid certificate, due or not (`--all --force`)."""
        ids = [c.id for c in self.repo.list_certificates(now=self.ctx.clock())]
        queued: list[int] = []
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            queued += self.repo.enqueue_renewals(self.ctx.clock(), BATCH, cert_ids=chunk)
        audit.record(
            self.ctx, "certificate.renew-all", "certificate", None, {"certificates": queued}
        )
        return queued


class Scheduler:
    """Queues due renewals every `interval` seconds until stopped (a thread in `serve`)."""

    def __init__(
        self,
        renewal: RenewalService,
        solvers: Iterable[ChallengeSolver],
        interval: float,
        chores: Iterable[Callable[[], object]] = (),
    ) -> None:
        self.renewal = renewal
        self.solvers = tuple(solvers)
        self.interval = interval
        self.chores = tuple(chores)  # more looks at the store each tick (agents' drift)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[int]:
        self.renewal.refresh_renewal_info()
        for solver in self.solvers:
            # What orders that ended while no process could clean up (a crash) left.
            solver.sweep()
        for chore in self.chores:
            chore()
        queued = self.renewal.queue_due()
        if queued:
            log.info("renewal due for %d certificate(s): %s", len(queued), _ids(queued))
        return queued

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                store_outage.answered()
            except StoreUnavailable as exc:
                store_outage.lost(exc)  # due renewals are found at the next tick after it
            except Exception:
                log.exception("scheduler: looking for due renewals failed; trying again")
            self._stop.wait(self.interval)


def _ids(ids: list[int], shown: int = 20) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
