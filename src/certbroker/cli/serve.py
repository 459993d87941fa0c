"""`certbroker serve`: the long-running broker.

A database that cannot be reached while serve starts (until its worker processes have
opened the store) ends it: exit 1 and one line naming its host, port and the driver's
reason, for the supervisor (systemd's `Restart=on-failure`) to start it again. Once it
serves, an outage is waited out (services/outage.py): /readyz says 503 "database
unreachable" meanwhile, and the work goes on when the database is back.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from certbroker.cli.state import State, say
from certbroker.domain.errors import ConfigError

log = logging.getLogger("certbroker.serve")


def run_serve(state: State) -> None:
    from certbroker.logs import LevelWatcher, parse_levels
    from certbroker.services.common import fault
    from certbroker.services.renewal import Scheduler
    from certbroker.services.workers import WorkerPool
    from certbroker.worker_processes import WorkerProcesses

    refusal = state.settings.metrics_refusal()
    if refusal is not None:  # before the store is opened: nothing has started
        raise ConfigError(refusal)
    # First, so a SIGTERM while the worker processes start still stops us cleanly.
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    broker = state.broker
    fault("store-opened")  # crash tests: the database goes away while serve starts
    settings = state.settings
    LevelWatcher(
        settings.log_level,
        parse_levels(settings.log_levels),
        broker.runtime.stored_log_levels,
    ).start()
    generated = broker.access.ensure_first_admin(settings.admin_password or None)
    if generated is not None:
        # Shown once, here; only its hash is kept.
        say(f"first start: user 'admin' made with password {generated} (shown only now)")
    from certbroker.api.server import WebServer

    running: dict[str, object] = {}  # the pools, once started: what /readyz looks at

    def workers_problems() -> list[str]:
        pool, others = running.get("pool"), running.get("others")
        if not isinstance(pool, WorkerPool) or not isinstance(others, WorkerProcesses):
            return ["the workers are starting"]
        problems = [] if pool.alive() else ["a worker thread of serve has ended"]
        problems += [f"worker process {n} is not running" for n in others.down()]
        return problems

    web = WebServer(broker, settings.listen_address(), workers_problems).start()
    responder = broker.bind_responder().start()
    try:
        processes = settings.effective_worker_processes
        fault("processes-starting")
        others = WorkerProcesses(settings, processes - 1).start()
        # Up: from here on a database outage is waited out, not the end of serve.
        pool = WorkerPool(broker.issuance, workers=settings.workers, label="p0")
        pool.start()
        running.update(pool=pool, others=others)
        scheduler = Scheduler(
            broker.renewal,
            broker.solvers.values(),
            settings.scheduler_interval,
            # More looks each tick: agents' drift, certificates entering an expiry threshold.
            chores=[broker.agents.check_drift, broker.notify.check_expiry],
        ).start()
        from certbroker.services.deploy import DeployWorker

        deployer = DeployWorker(broker.deploy).start()  # push targets, retried with backoff
        from certbroker.services.webhooks import WebhookWorker

        webhooks = WebhookWorker(broker.webhooks).start()  # the outbox, signed POSTs, retries
        from certbroker.services.notify import MailWorker

        mailer = MailWorker(broker.notify).start()  # expiry warnings and the mail outbox
        log.info(
            "certbroker serving: API and console on %s, HTTP-01 on %s:%d, "
            "%d worker process%s × %d workers, renewals checked every %g s, store %s",
            web.url,
            settings.http01_address,
            responder.port,
            processes,
            "" if processes == 1 else "es",
            settings.workers,
            settings.scheduler_interval,
            settings.data_dir,
        )
        while not stop.wait(1.0):
            others.check()
        scheduler.stop()
        deployer.stop()
        webhooks.stop()
        mailer.stop()
        others.terminate()  # they stop while this process's workers do
        pool.stop()
        others.stop()
    finally:
        responder.stop()
        web.stop()
