"""`certbroker serve`: the long-running broker."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from certbroker.cli.state import State

log = logging.getLogger("certbroker.serve")


def run_serve(state: State) -> None:
    from certbroker.services.workers import WorkerPool

    broker = state.broker
    settings = state.settings
    responder = broker.bind_responder().start()
    pool = WorkerPool(broker.issuance, workers=settings.workers)
    pool.start()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "certbroker serving: HTTP-01 on %s:%d, %d workers, store %s",
        settings.http01_address,
        responder.port,
        settings.workers,
        settings.data_dir,
    )
    stop.wait()
    pool.stop()
    responder.stop()
