"""HTTP-01 answered at the edge by gateway agents: an order's tokens go into
the store as for HTTP-01; every node pushes them to the agents connected to it that are
allowed the names, and each agent answers them on its own port 80. The CA is told to
validate only once every connected agent allowed a name holds its token (the CA may
reach any gateway behind a load balancer), so the broker itself need not be reachable
from the internet."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from certbroker.domain.agents import AGENT_LIVE, missing_acks
from certbroker.domain.errors import TransientError, UsageError
from certbroker.domain.models import Certificate, ChallengeType
from certbroker.ports import ChallengeJob, PendingChallenge, Progress, SolverChoice
from certbroker.services.common import ServiceContext

ACK_TIMEOUT = 60.0  # seconds the agents have to take an order's tokens


class AgentHttp01Solver:
    type = ChallengeType.AGENT_HTTP_01

    def __init__(self, ctx: ServiceContext, ack_timeout: float = ACK_TIMEOUT) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.ack_timeout = ack_timeout

    def check_request(self, names: Sequence[str], dns_account: str | None) -> SolverChoice:
        if dns_account is not None:
            raise UsageError("--dns-account is only used with --challenge dns-01")
        return SolverChoice()

    def describe(self, cert: Certificate) -> Mapping[str, Any]:
        return {"dns_account": None, "answered_by": "the gateway agents allowed the names"}

    @contextlib.contextmanager
    def answering(self, progress: Progress) -> Iterator[None]:
        yield  # the agents answer, wherever they are connected

    def present(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """The tokens into the store; every node hands them to its agents."""
        rows = [(c.token, c.key_authorization, c.identifier, self.type.value) for c in challenges]
        self.repo.present_challenges(job.order.id, job.owner, rows, self.ctx.clock())
        job.progress("tokens handed to the gateway agents")

    def wait_ready(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """Until every connected agent allowed each name says it answers its token."""
        deadline = time.monotonic() + self.ack_timeout
        delay = 0.05
        while True:
            agents = self.repo.live_agents(self.ctx.clock() - AGENT_LIVE)
            acks = self.repo.acks_of([c.token for c in challenges])
            by_name = {c.identifier: acks.get(c.token, set()) for c in challenges}
            missing = missing_acks([c.identifier for c in challenges], agents, by_name)
            if not missing:
                job.progress("every gateway agent allowed the names holds its token")
                return
            if time.monotonic() >= deadline:
                raise TransientError(
                    "the gateway agents did not take the tokens in "
                    f"{self.ack_timeout:.0f} s: {'; '.join(missing)}; is `certbroker agent` "
                    "running and connected there?"
                )
            job.keep_lease()
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def cleanup(self, order_id: int) -> None:
        """The store deletes an order's tokens when the order ends; their acks go with
        the sweep."""

    def sweep(self) -> int:
        return self.repo.sweep_acks()
