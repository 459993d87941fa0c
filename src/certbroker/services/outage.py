"""What a running `serve` does when its database goes away: it waits.

Every thread that looks at the store on its own (the workers, the scheduler, the
deployment, webhook and mail outboxes, the API's streams and agent hub) meets the
outage as `StoreUnavailable`, reports it here and tries again at its next tick. Here
the outage becomes one warning when the first thread meets it and one line when a look
succeeds again, however many threads and ticks meet it in between: a database down for
minutes is two lines in the log, not a traceback per thread per second.

What a thread was doing when the database went away is not lost: each step of an order
is written before the next starts, so the order is resumed from its last recorded step
by whichever worker takes it once the lease runs out (an order created at the CA but not
yet recorded is found again in the account's orders, `OrderRun._orphan`).
"""

from __future__ import annotations

import logging
import threading
import time

from certbroker.domain.errors import StoreFull, StoreUnavailable
from certbroker.store.space import report_full

log = logging.getLogger("certbroker.store")

RETRY_EVERY = 1.0  # seconds a worker waits before it looks again while the store is away


class Outage:
    """This process's view of the store: answering, or away since when."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic; None: the store answers

    @property
    def down(self) -> bool:
        return self._since is not None

    def lost(self, exc: StoreUnavailable) -> None:
        """A thread could not reach the store; the first since it last answered says so."""
        if isinstance(exc, StoreFull):
            # A full store still answers (reads go on): its episodes are its own, ended by
            # a write that stores something, not by any look that succeeds.
            report_full(exc)
            return
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.warning("%s; waiting for it, the work goes on when it answers", exc)

    def answered(self) -> None:
        """A look at the store succeeded: the end of the outage, if there was one."""
        if self._since is None:  # the usual case: no lock taken on every tick
            return
        with self._lock:
            if self._since is None:
                return
            away, self._since = time.monotonic() - self._since, None
        log.warning("the database answers again (after %.0f s away); going on", away)


# One per process: the log lines are the process's, whichever broker its threads serve.
store_outage = Outage()
