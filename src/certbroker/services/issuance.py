"""Issuance: orders driven to a certificate, and what happens when one fails.

An order advances through the persisted state machine in services/order_run.py; this
service runs it under a lease and turns its outcome into the next step: a retry later
(transient), a fall back to the next account (CA fallback), the next try of a failing
certificate, or a wait for a person (manual DNS-01). It also drives a certificate to the end
in the calling process (`--wait`) and resumes or verifies one on request.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from certbroker.domain.errors import (
    AcmeProblem,
    AwaitingDns,
    CAError,
    LeaseLost,
    NotFoundError,
    PermanentError,
    StoreUnavailable,
    TransientError,
    UsageError,
)
from certbroker.domain.models import (
    Account,
    AccountStatus,
    Certificate,
    ChallengeType,
    Order,
    OrderState,
)
from certbroker.domain.renewal import emergency_point
from certbroker.domain.retry import heals_by_itself, next_try, what_a_person_must_change
from certbroker.ports import ChallengeSolver, Progress
from certbroker.services.budgets import BudgetService
from certbroker.services.common import ServiceContext, no_progress
from certbroker.services.leases import Leases, lease
from certbroker.services.order_run import (
    CLIENT_REFUSED,
    ClientRefused,
    HeldBack,
    OrderRun,
    RunContext,
)
from certbroker.services.planning import RenewalPlanner

log = logging.getLogger("certbroker.issuance")

LONGEST_WAIT = 60.0  # seconds wait_for sleeps for a retry; a later one is left to serve


class Outcome(StrEnum):
    ISSUED = "issued"
    FAILED = "failed"
    RETRY = "retry"  # a transient failure; next_run_at says when
    BUSY = "busy"  # another live worker holds the order
    AWAITING = "awaiting"  # manual DNS-01: a person writes the records, then `cert verify`


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    order: Order
    message: str = ""


class IssuanceService:
    def __init__(
        self,
        ctx: ServiceContext,
        solvers: Mapping[ChallengeType, ChallengeSolver],
        planner: RenewalPlanner,
        *,
        order_timeout: float = 300.0,
        retry_attempts: int = 4,
        validation_cap: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.solvers = solvers
        self.planner = planner
        self.leases = Leases(ctx)
        self.order_timeout = order_timeout
        self.retry_attempts = retry_attempts
        self.validation_cap = validation_cap  # failed validations per name and hour
        self.budgets = BudgetService(ctx)
        self.sleep = sleep

    def _run_context(self) -> RunContext:
        return RunContext(
            repo=self.repo,
            sealer=self.ctx.sealer,
            clock=self.ctx.clock,
            sleep=self.sleep,
            ca_for=self.ctx.ca_for,
            solvers=self.solvers,
            planner=self.planner,
            order_timeout=self.order_timeout,
            retry_attempts=self.retry_attempts,
            validation_cap=self.validation_cap,
            budgets=self.budgets,
        )

    @contextlib.contextmanager
    def answering(
        self, challenges: Iterable[ChallengeType], progress: Progress = no_progress
    ) -> Iterator[None]:
        """For the duration, make sure something answers the CA for each challenge type
        (the HTTP-01 responder runs here unless `serve` already answers this store)."""
        with contextlib.ExitStack() as stack:
            for kind in sorted(set(challenges)):
                stack.enter_context(self.solvers[kind].answering(progress))
            yield

    def answering_for(
        self, cert_ids: Iterable[int], progress: Progress = no_progress
    ) -> contextlib.AbstractContextManager[None]:
        """`answering` for the challenge types of these certificates."""
        return self.answering({self.repo.get_certificate(i).challenge for i in cert_ids}, progress)

    # -- one order ---------------------------------------------------------------------------

    def run(
        self,
        order: int | Order,
        owner: str,
        progress: Progress = no_progress,
        *,
        confirmed: bool = False,
    ) -> RunResult:
        """Advance one order (by ID, or as just claimed) as far as it goes. The caller
        holds the lease. `confirmed`: a person says the manual DNS records are written."""
        result = self._run(order, owner, progress, confirmed)
        if not result.order.state.active:
            cert = self.repo.get_certificate(result.order.certificate_id)
            try:
                self.solvers[cert.challenge].cleanup(result.order.id)
            except StoreUnavailable:
                raise  # the outcome is recorded; serve's sweep cleans up after the outage
            except Exception:  # never turns an outcome around; serve's sweep retries it
                log.exception("order %d: cleaning up its challenges failed", result.order.id)
        return result

    def _run(
        self, order: int | Order, owner: str, progress: Progress, confirmed: bool
    ) -> RunResult:
        if isinstance(order, int):
            order = self.repo.get_order(order)
        order_id = order.id
        if not order.state.active:
            return RunResult(
                Outcome.ISSUED if order.state is OrderState.VALID else Outcome.FAILED, order
            )
        try:
            OrderRun(self._run_context(), order, owner, progress, confirmed=confirmed).drive()
        except AwaitingDns as exc:
            with contextlib.suppress(LeaseLost):
                self.repo.await_person(
                    order_id, owner, self.ctx.clock(), str(exc), exc.first, exc.order_gone
                )
            return RunResult(Outcome.AWAITING, self.repo.get_order(order_id), str(exc))
        except LeaseLost as exc:
            log.info("order %d: %s", order_id, exc)
            return RunResult(Outcome.BUSY, self.repo.get_order(order_id), str(exc))
        except ClientRefused as exc:
            # No retry and no CA fallback: the client, not a CA, said no.
            message = str(exc)
            log.warning("order %d: certificate %d: %s", order_id, order.certificate_id, message)
            with contextlib.suppress(LeaseLost):
                self.repo.stop_for_client(
                    order_id, owner, self.ctx.clock(), message, CLIENT_REFUSED
                )
            return RunResult(Outcome.FAILED, self.repo.get_order(order_id), message)
        except HeldBack as exc:
            log.warning("order %d: %s", order_id, exc)
            with contextlib.suppress(LeaseLost):
                self.repo.hold(order_id, owner, self.ctx.clock(), exc.until, str(exc))
            return RunResult(Outcome.RETRY, self.repo.get_order(order_id), str(exc))
        except TransientError as exc:
            if exc.problem is not None and exc.problem.code == "rateLimited":
                self._rate_limited(order, exc)
            return self._transient(order_id, owner, exc)
        except (PermanentError, CAError) as exc:
            message = self._explain(exc, order)
            self._fail(order_id, owner, message, exc.problem)
            return RunResult(Outcome.FAILED, self.repo.get_order(order_id), message)
        return RunResult(Outcome.ISSUED, self.repo.get_order(order_id))

    def _rate_limited(self, order: Order, exc: TransientError) -> None:
        """The CA's rateLimited holds what it names on every node, not only this order."""
        assert exc.problem is not None
        cert = self.repo.get_certificate(order.certificate_id)
        account = self.repo.get_account(order.account_id or cert.account_id)
        try:
            self.budgets.rate_limited(account, cert, exc.problem, exc.retry_after)
        except StoreUnavailable:
            raise  # nor can the order's retry be recorded: the worker waits the outage out
        except Exception:  # the order's own retry waits for the CA either way
            log.exception("order %d: recording the CA's rate limit failed", order.id)

    def _explain(self, exc: CAError, order: Order) -> str:
        """The CA's error, and what fixes it where certbroker knows."""
        if exc.problem is None or exc.problem.code != "accountDoesNotExist":
            return str(exc)
        cert = self.repo.get_certificate(order.certificate_id)
        account = self.repo.get_account(order.account_id or cert.account_id)
        return (
            f"the CA ({account.directory_url}) no longer knows account {account.name!r} "
            f"(accountDoesNotExist: deleted there, or the CA was reset); "
            f"`certbroker account recreate {account.name}` registers its key again"
        )

    def _fail(
        self,
        order_id: int,
        owner: str,
        message: str,
        problem: AcmeProblem | None,
        *,
        transient: bool = False,
        wait: float | None = None,
    ) -> None:
        """The order failed for good: the next account takes over (CA fallback); else the
        certificate is tried again later, sooner when the cause may heal by itself
        (domain/retry.py), never before the CA's Retry-After (`wait`, seconds), unless a
        person disabled it."""
        now = self.ctx.clock()
        order = self.repo.get_order(order_id)
        cert = self.repo.get_certificate(order.certificate_id)
        fallback = self._next_account(cert, order)
        if fallback is not None:
            used = self.repo.get_account(order.account_id or cert.account_id)
            note = (
                f"account {used.name!r} ({used.directory_url}) failed: {message}; falling "
                f"back to account {fallback.name!r} ({fallback.directory_url})"
            )
            log.warning("order %d: %s", order_id, note)
            with contextlib.suppress(LeaseLost):
                self.repo.fail_order(
                    order_id, owner, now, message, problem, fall_back_to=fallback.id,
                    fallback_message=note,
                )  # fmt: skip
            return
        failures = 1 + self._failed_in_a_row(order.certificate_id)
        heals = heals_by_itself(problem, transient)
        emergency = (
            emergency_point(cert.not_before, cert.not_after)
            if cert.not_before is not None and cert.not_after is not None
            else None
        )
        next_at = None
        if cert.disabled:
            message += f"; not tried again: disabled (`certbroker cert enable {cert.id}`)"
        else:
            next_at = next_try(failures, now, heals=heals, emergency=emergency)
            if wait:  # the CA's Retry-After (rateLimited): never before it says
                next_at = max(next_at, now + timedelta(seconds=wait))
            message += (
                f"; `certbroker serve` tries again at {next_at:%Y-%m-%d %H:%M} UTC"
                + (
                    ""
                    if heals
                    else " (this needs a change outside certbroker first: "
                    f"{what_a_person_must_change(problem)})"
                )
                + f"; `certbroker cert disable {cert.id}` stops it"
            )
        log.warning("order %d failed: %s", order_id, message)
        with contextlib.suppress(LeaseLost):
            self.repo.fail_order(order_id, owner, now, message, problem, next_try_at=next_at)

    def _failed_in_a_row(self, cert_id: int) -> int:
        """Orders of the certificate that failed since it last got a certificate."""
        history = self.repo.orders_of(cert_id)
        last_valid = max((o.id for o in history if o.state is OrderState.VALID), default=0)
        return sum(1 for o in history if o.id > last_valid and o.state is OrderState.FAILED)

    def _next_account(self, cert: Certificate, order: Order) -> Account | None:
        """The usable account after the one this order went to, for CA fallback."""
        ids = cert.account_ids
        current = order.account_id or cert.account_id
        later = ids[ids.index(current) + 1 :] if current in ids else ()
        for account_id in later:
            account = self.repo.get_account(account_id)
            if account.status is AccountStatus.VALID:
                return account
        return None

    def _transient(self, order_id: int, owner: str, exc: TransientError) -> RunResult:
        order = self.repo.get_order(order_id)
        attempts = order.attempts + 1
        if attempts >= self.retry_attempts:
            message = f"{exc} (gave up after {attempts} attempts)"
            self._fail(order_id, owner, message, exc.problem, transient=True, wait=exc.retry_after)
            return RunResult(Outcome.FAILED, self.repo.get_order(order_id), message)
        delay = max(exc.retry_after or 0.0, min(300.0, 2.0**attempts))
        delay *= 1 + secrets.randbelow(250) / 1000  # jitter, so retries spread out
        now = self.ctx.clock()
        try:
            self.repo.retry_later(
                order_id,
                owner,
                now,
                attempts=attempts,
                message=f"{exc}; retrying in {delay:.0f} s",
                problem=exc.problem,
                next_run_at=now + timedelta(seconds=delay),
            )
        except LeaseLost:
            return RunResult(Outcome.BUSY, self.repo.get_order(order_id), str(exc))
        log.info("order %d: %s; retrying in %.1f s", order_id, exc, delay)
        return RunResult(Outcome.RETRY, self.repo.get_order(order_id), str(exc))

    # -- a certificate, on request -----------------------------------------------------------

    def resume(self, cert_id: int, lease_owner: str | None = None) -> bool:
        """Make sure the certificate has an active order: an interrupted or queued one
        is kept, else (after a failure) a new one is queued. True when one was queued."""
        self.repo.get_certificate(cert_id)  # an unknown ID is refused
        if self.repo.active_order_of(cert_id) is not None:
            return False
        self.new_order_for(cert_id, lease_owner)
        return True

    def new_order_for(self, cert_id: int, lease_owner: str | None = None) -> Order:
        """A fresh order for an existing certificate (retry after failure), or the active
        one it already has."""
        existing = self.repo.active_order_of(cert_id)
        if existing is not None:
            return existing
        now = self.ctx.clock()
        return self.repo.add_order(cert_id, now, lease_owner, now + lease())

    def _awaiting_dns(self, cert_id: int) -> Order:
        """The certificate's order waiting for a person's TXT records; UsageError when
        there is none."""
        cert = self.repo.get_certificate(cert_id)
        if not cert.dns_manual:
            raise UsageError(
                f"certificate {cert_id} does not use manual DNS validation; nothing to verify"
            )
        order = self.repo.active_order_of(cert_id)
        if order is None or order.state is not OrderState.AWAITING_DNS:
            state = order.state.value if order else "no active order"
            raise UsageError(
                f"certificate {cert_id} is not waiting for DNS records ({state}); "
                f"`certbroker cert renew {cert_id}` starts a new order"
            )
        return order

    def verify(
        self, cert_id: int, owner: str, new_challenge: bool, progress: Progress = no_progress
    ) -> RunResult:
        """Manual DNS-01: check the records a person wrote and go on to the certificate;
        with `new_challenge`, start over with a fresh order (new values to write)."""
        order = self._awaiting_dns(cert_id)
        if not self.leases.claim(order.id, owner):
            raise UsageError(
                f"order {order.id} is being worked on by {order.lease_owner}; try again shortly"
            )
        if new_challenge:
            self.repo.restart_order(order.id, owner, self.ctx.clock())
            progress(f"order {order.id}: starting over with a new order at the CA")
            return self.run(order.id, owner, progress)
        result = self.run(order.id, owner, progress, confirmed=True)
        if result.outcome in (Outcome.RETRY, Outcome.BUSY):
            return self.wait_for(cert_id, owner, progress)
        return result

    def verify_in_background(self, cert_id: int, owner: str, new_challenge: bool) -> None:
        """`verify` in a thread of this process (the API and console answer at once and
        show the progress); refused here, before the thread, when nothing waits."""
        self._awaiting_dns(cert_id)

        def run() -> None:
            try:
                self.verify(cert_id, owner, new_challenge)
            except Exception:
                log.exception("certificate %d: verifying the DNS records failed", cert_id)

        threading.Thread(target=run, name=f"verify-{cert_id}", daemon=True).start()

    def wait_for(self, cert_id: int, owner: str, progress: Progress = no_progress) -> RunResult:
        """Drive the certificate's active order to the end in this process (CLI --wait)."""
        while True:
            order = self.repo.active_order_of(cert_id)
            if order is None:
                orders = self.repo.orders_of(cert_id)
                if not orders:
                    raise NotFoundError(f"certificate {cert_id} has no order")
                last = orders[-1]
                outcome = Outcome.ISSUED if last.state is OrderState.VALID else Outcome.FAILED
                return RunResult(outcome, last, last.error_message or "")
            if not self.leases.claim(order.id, owner):
                progress(f"order {order.id} is being worked on by {order.lease_owner}; waiting")
                self.sleep(1.0)
                continue
            result = self.run(order.id, owner, progress)
            if result.outcome is Outcome.RETRY:
                due = result.order.next_run_at or self.ctx.clock()
                pause = max(0.0, (due - self.ctx.clock()).total_seconds())
                if pause > LONGEST_WAIT:
                    return result  # not worth blocking a terminal for; serve will retry
                progress(f"{result.message}; retrying in {pause:.0f} s")
                self.sleep(pause)
                continue
            if result.outcome is Outcome.BUSY:
                self.sleep(0.5)
                continue
            if result.outcome is Outcome.FAILED:
                following = self.repo.active_order_of(cert_id)
                if following is not None and following.account_id is not None:
                    account = self.repo.get_account(following.account_id)
                    progress(f"{result.message}; falling back to account {account.name!r}")
                    continue
            return result
