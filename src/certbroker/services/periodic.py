"""A look at the store every few seconds, in a thread of `serve` of its own, until
stopped: what the push-target deployments, the webhook outbox and the mail outbox share.
A look that fails is logged and the next one comes as usual; a store that cannot be
reached is waited out (services/outage.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from certbroker.domain.errors import StoreUnavailable
from certbroker.services.leases import make_owner
from certbroker.services.outage import store_outage


class Periodic:
    """Calls `look(owner)` every `interval` seconds; `owner` names this thread's leases."""

    def __init__(
        self,
        name: str,
        look: Callable[[str], object],
        interval: float,
        log: logging.Logger,
    ) -> None:
        self.name = name
        self.look = look
        self.interval = interval
        self.log = log
        self.owner = make_owner(name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Periodic:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.look(self.owner)
                store_outage.answered()
            except StoreUnavailable as exc:
                store_outage.lost(exc)  # one line for the whole outage, not one a look
            except Exception:
                self.log.exception("%s: a look at the store failed; trying again", self.name)
            self._stop.wait(self.interval)
