"""The HTTP-01 solver: an order's tokens go into the store, where every responder on
the store (any `serve` process or node, or the CLI's own during `--wait`) answers them.
"""

from __future__ import annotations

import contextlib
import logging
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

# (port, put a token, remove it) -> whether what listens on the port answered it
Probe = Callable[[int, Callable[[str, str], None], Callable[[str], None]], bool]


class Http01Solver:
    type = ChallengeType.HTTP_01

    def __init__(
        self,
        ctx: ServiceContext,
        start_responder: Callable[[], RunningResponder],
        probe: Probe,
        port: int,
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.start_responder = start_responder  # binds the port (CertbrokerError if taken)
        self.probe = probe
        self.port = port

    def check_request(self, names: Sequence[str], dns_account: str | None) -> SolverChoice:
        if dns_account is not None:
            raise UsageError("--dns-account is only used with --challenge dns-01")
        return SolverChoice()

    def describe(self, cert: Certificate) -> Mapping[str, Any]:
        return {"dns_account": None}

    @contextlib.contextmanager
    def answering(self, progress: Progress) -> Iterator[None]:
        """Run the responder here for the duration unless something already answers
        this store's tokens on the port (`certbroker serve`)."""
        responder = self._responder_unless_served()
        if responder is not None:
            progress(f"answering HTTP-01 on port {responder.port} for the duration")
        try:
            yield
        finally:
            if responder is not None:
                responder.stop()

    def _responder_unless_served(self) -> RunningResponder | None:
        try:
            return self.start_responder()
        except CertbrokerError as bind_error:
            now = self.ctx.clock()
            served = self.probe(
                self.port,
                lambda token, value: self.repo.put_challenges(
                    None, [(token, value, "probe", "probe")], now
                ),
                self.repo.delete_challenge,
            )
            if served:
                log.info("port %d already answers this store's challenges; using it", self.port)
                return None
            raise CertbrokerError(
                f"{bind_error}; and what listens there does not answer certbroker's "
                "challenges. Stop it, run `certbroker serve` there, or set "
                "CERTBROKER_HTTP01_PORT"
            ) from None

    def present(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """Every token of the order into the store at once; any responder answers it."""
        rows = [(c.token, c.key_authorization, c.identifier, self.type.value) for c in challenges]
        self.repo.present_challenges(job.order.id, job.owner, rows, self.ctx.clock())

    def wait_ready(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """Nothing to wait for: a responder reads the store on every request."""

    def cleanup(self, order_id: int) -> None:
        """Nothing left to remove: the store deletes an order's tokens in the transaction
        that ends the order (issued, failed, or its certificate deleted)."""

    def sweep(self) -> int:
        return 0
