"""The worker pool: several orders advance at once, each under a lease in the store.

Workers find claimable orders in the store, not in memory, so several processes (or
nodes) on one store share the work, and an order left by a killed process is taken
over when its lease runs out (at once when the dead holder ran on this host). A store
that cannot be reached is waited out (services/outage.py).
"""

from __future__ import annotations

import logging
import threading
import time

from certbroker.domain.errors import StoreUnavailable
from certbroker.domain.models import Order
from certbroker.services.issuance import IssuanceService
from certbroker.services.leases import make_owner
from certbroker.services.outage import RETRY_EVERY, store_outage

log = logging.getLogger("certbroker.workers")


class WorkerPool:
    def __init__(
        self, issuance: IssuanceService, workers: int = 8, idle_poll: float = 0.5, label: str = ""
    ) -> None:
        self.issuance = issuance
        self.workers = workers
        self.label = label
        self.idle_poll = idle_poll
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.workers):
            thread = threading.Thread(
                target=self._work,
                args=(make_owner(f"{self.label}w{n}"),),
                name=f"worker-{self.label}{n}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        """Every worker thread runs (started, and none ended by an error)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def wake(self) -> None:
        """New work was queued; look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Workers finish the order at hand; one still busy after `timeout` is abandoned
        (its lease lets the next process resume the order)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _next(self, owner: str) -> Order | int | None:
        return self.issuance.leases.claim_next(owner, look_at=self.workers * 4)

    def _work(self, owner: str) -> None:
        while not self._stop.is_set():
            try:
                order = self._next(owner)
                store_outage.answered()
                if order is None:
                    self._wake.wait(self.idle_poll)
                    self._wake.clear()
                    continue
                result = self.issuance.run(order, owner)
                log.info("order %d: %s %s", result.order.id, result.outcome.value, result.message)
            except StoreUnavailable as exc:
                # The order at hand keeps its last recorded step and this worker's lease;
                # when the lease runs out, a worker (this one, or another node's) resumes
                # it from that step, asking the CA where it stands: nothing is ordered twice.
                store_outage.lost(exc)
                self._stop.wait(RETRY_EVERY)
            except Exception:
                # One bad order must not take a worker down; the lease lets another retry it.
                log.exception("worker %s: unexpected error", owner)
                self._stop.wait(1.0)
