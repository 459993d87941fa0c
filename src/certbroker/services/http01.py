"""The HTTP-01 solver: an order's tokens go into the store, where every responder on
the store (any `serve` process or node, or the CLI's own during `--wait`) answers them.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from certbroker.domain.errors import CertbrokerError, UsageError
from certbroker.domain.models import Certificate, ChallengeType
from certbroker.ports import (
    ChallengeJob,
    PendingChallenge,
    Progress,
    RunningResponder,
    SolverChoice,
)
from certbroker.services.common import ServiceContext

log = logging.getLogger("certbroker.challenges")

HANDOVER_WAIT = 300.0  # seconds a CLI's responder waits for other processes' orders

# (port, token, key authorization) -> whether what listens on the port answers it
Answers = Callable[[int, str, str], bool]


class Http01Solver:
    type = ChallengeType.HTTP_01

    def __init__(
        self,
        ctx: ServiceContext,
        start_responder: Callable[[], RunningResponder],
        answers: Answers,
        port: int,
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.start_responder = start_responder  # binds the port (CertbrokerError if taken)
        self.answers = answers
        self.port = port
        self._takeover: _TakeOver | None = None  # while another process answers for us

    def check_request(self, names: Sequence[str], dns_account: str | None) -> SolverChoice:
        if dns_account is not None:
            raise UsageError("--dns-account is only used with --challenge dns-01")
        return SolverChoice()

    def describe(self, cert: Certificate) -> Mapping[str, Any]:
        return {"dns_account": None}

    @contextlib.contextmanager
    def answering(self, progress: Progress) -> Iterator[None]:
        """Make sure something answers this store's tokens on the port for the duration.

        Several CLI processes may do this at once on one store (an automation tool running
        one `cert request --wait` per host): the first runs the responder, the others rely
        on it. So the one that runs it keeps it, after its own work, while tokens of other
        live orders remain (up to HANDOVER_WAIT); and one that relies on another takes the
        port over as soon as it is free."""
        responder = self._responder_unless_served()
        takeover = None
        if responder is not None:
            progress(f"answering HTTP-01 on port {responder.port} for the duration")
        else:
            takeover = self._takeover = _TakeOver(self.start_responder, progress).start()
        try:
            yield
        finally:
            if takeover is not None:
                self._takeover = None
                responder = takeover.stop()
            if responder is not None:
                self._linger()
                responder.stop()

    def _linger(self) -> None:
        """Keep answering while other processes' orders still have tokens out."""
        deadline = time.monotonic() + HANDOVER_WAIT
        while time.monotonic() < deadline and self.repo.challenges_in_flight(self.ctx.clock()):
            time.sleep(0.2)

    def _responder_unless_served(self) -> RunningResponder | None:
        """The responder this process starts, or None when what holds the port answers
        this store. Tried three times: the holder may let the port go between the two."""
        for _ in range(3):
            try:
                return self.start_responder()
            except CertbrokerError as exc:
                bind_error = exc
            if self._serves_this_store():
                log.info("port %d already answers this store's challenges; using it", self.port)
                return None
        raise CertbrokerError(
            f"{bind_error}; and what listens there does not answer certbroker's "
            "challenges. Stop it, run `certbroker serve` there, or set "
            "CERTBROKER_HTTP01_PORT"
        ) from None

    def _serves_this_store(self) -> bool:
        """Whether what listens on the port answers a probe token put into this store."""
        token = "certbroker-probe-" + secrets.token_urlsafe(16)
        value = f"{token}.{secrets.token_urlsafe(16)}"
        self.repo.put_challenges(None, [(token, value, "probe", "probe")], self.ctx.clock())
        try:
            return self.answers(self.port, token, value)
        finally:
            self.repo.delete_challenge(token)

    def present(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """Every token of the order into the store at once; any responder answers it."""
        rows = [(c.token, c.key_authorization, c.identifier, self.type.value) for c in challenges]
        self.repo.present_challenges(job.order.id, job.owner, rows, self.ctx.clock())

    def wait_ready(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """A responder of this process reads the store on every request: nothing to wait
        for. One that another process runs is asked for the tokens first, as the CA will
        ask; if it is gone, this process takes the port over before any is answered."""
        takeover = self._takeover
        if takeover is None:
            return
        if not all(self.answers(self.port, c.token, c.key_authorization) for c in challenges):
            takeover.now()

    def cleanup(self, order_id: int) -> None:
        """Nothing left to remove: the store deletes an order's tokens in the transaction
        that ends the order (issued, failed, or its certificate deleted)."""

    def sweep(self) -> int:
        return 0


class _TakeOver:
    """While another process answers on the port, try every 0.1 s to take the port
    over, so that one leaving never leaves the store's tokens unanswered."""

    def __init__(self, start: Callable[[], RunningResponder], progress: Progress) -> None:
        self._start = start
        self._progress = progress
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="http01-takeover", daemon=True)
        self.responder: RunningResponder | None = None

    def start(self) -> _TakeOver:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if self.now():
                return

    def now(self) -> bool:
        """Try once to take the port over; True when this process answers on it."""
        with self._lock:
            if self.responder is not None:
                return True
            try:
                self.responder = self._start()
            except CertbrokerError:
                return False  # still taken
        self._progress(f"took over answering HTTP-01 on port {self.responder.port}")
        return True

    def stop(self) -> RunningResponder | None:
        """Stop trying; the responder it took over, if any (the caller stops it)."""
        self._stop.set()
        self._thread.join()
        return self.responder
