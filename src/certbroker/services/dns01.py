"""The DNS-01 solver: an order's TXT records written through its DNS accounts (or shown
to a person in manual mode), checked until visible where the CA will look, and removed
exactly as written.

Every record is stored before it is written (`dns_records`), so a record whose order
ended while no process could remove it (a crash) is removed later by `sweep`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from certbroker.domain.dns import MANUAL, DnsRecord, Server, challenge_record_name, txt_value
from certbroker.domain.errors import (
    AwaitingDns,
    CAError,
    NotFoundError,
    PermanentError,
    TransientError,
    UsageError,
)
from certbroker.domain.models import Certificate, ChallengeType, OrderState
from certbroker.ports import ChallengeJob, DnsProvider, PendingChallenge, Progress, SolverChoice
from certbroker.services.common import fault, no_progress
from certbroker.services.dns import DnsService

log = logging.getLogger("certbroker.challenges")

CLEANUP_RETRY = timedelta(minutes=10)


class Dns01Solver:
    type = ChallengeType.DNS_01

    def __init__(self, dns: DnsService) -> None:
        self.dns = dns
        self.repo = dns.repo
        self.ctx = dns.ctx

    # -- the request -----------------------------------------------------------------------

    def check_request(self, names: Sequence[str], dns_account: str | None) -> SolverChoice:
        """The DNS account a request names (or manual mode, or each name's zone); refuses
        a request some name of which no DNS account serves."""
        if dns_account is not None and dns_account.strip().lower() == MANUAL:
            return SolverChoice(dns_manual=True)
        if dns_account is not None:
            return SolverChoice(dns_account_id=self.dns.get(dns_account).id)
        missing = [n for n in names if not self._served(challenge_record_name(n))]
        if missing:
            raise UsageError(
                f"no DNS account for {', '.join(missing)}: choose one with --dns-account NAME "
                "(or --dns-account manual), or make one the default of the zone with "
                "`certbroker dns zones NAME --add ZONE`"
            )
        return SolverChoice()

    def _served(self, name: str) -> bool:
        """A zone default serves `name`, or the target of its CNAME (acme-dns pattern)."""
        if self.repo.dns_account_for(name) is not None:
            return True
        try:
            target = self.dns.lookups.cname_target(name)
        except CAError:
            return False
        return target != name and self.repo.dns_account_for(target) is not None

    def describe(self, cert: Certificate) -> Mapping[str, Any]:
        if cert.dns_manual:
            return {"dns_account": MANUAL}
        if cert.dns_account_id is None:
            return {"dns_account": "by zone"}
        try:
            return {"dns_account": self.repo.get_dns_account(cert.dns_account_id).name}
        except NotFoundError:
            return {"dns_account": f"#{cert.dns_account_id} (deleted)"}

    def answering(self, progress: Progress) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # the DNS servers answer, not this process

    # -- an order's records ------------------------------------------------------------------

    def present(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """Store, then write (manual mode: show), one TXT record per challenge."""
        cert, order = job.certificate, job.order
        if not challenges:
            return
        if cert.dns_manual and order.state is OrderState.AWAITING_DNS:
            if not job.confirmed:
                raise AwaitingDns(
                    "waiting for the TXT records (`certbroker cert verify`)", first=False
                )
            stored = {(r.identifier, r.value) for r in self.repo.dns_records_of(order.id)}
            expected = {(c.identifier, txt_value(c.key_authorization)) for c in challenges}
            if not expected <= stored:
                raise AwaitingDns.expired(cert.id, "its challenges changed")
            return
        records = self._write(cert, order.id, job.owner, challenges, job.progress)
        fault("dns-written")
        if cert.dns_manual:
            shown = "; ".join(f"{r.name} TXT {r.value!r}" for r in records)
            raise AwaitingDns(
                f"write these TXT records, then run `certbroker cert verify {cert.id}`: {shown}",
                first=True,
            )

    def wait_ready(self, job: ChallengeJob, challenges: Sequence[PendingChallenge]) -> None:
        """Until every record of the order is visible at the servers that matter. In
        manual mode a record not there yet leaves the order waiting for the person."""
        if not challenges:
            return
        records = self.repo.dns_records_of(job.order.id)
        if not job.certificate.dns_manual:
            self.wait_visible(records, job.progress, job.keep_lease)
            return
        try:
            self.wait_visible(records, job.progress, job.keep_lease)
        except TransientError as exc:
            raise AwaitingDns(f"not yet: {exc}", first=False) from None

    def _write(
        self,
        cert: Certificate,
        order_id: int,
        owner: str,
        challenges: Sequence[PendingChallenge],
        progress: Progress,
    ) -> list[DnsRecord]:
        """CNAMEs at `_acme-challenge.<name>` are followed and the record goes to the
        target, through the DNS account of the target's zone."""
        rows: list[tuple[str, str, str, int | None]] = []
        for challenge in challenges:
            name = challenge_record_name(challenge.identifier)
            target = self.dns.lookups.cname_target(name)
            account_id = None if cert.dns_manual else self._account_for(cert, name, target)
            value = txt_value(challenge.key_authorization)
            rows.append((challenge.identifier, target, value, account_id))
        records = self.repo.add_dns_records(order_id, owner, rows, self.ctx.clock())
        if cert.dns_manual:
            return records
        providers: dict[int, DnsProvider] = {}
        for record in records:
            if record.written or record.dns_account_id is None:
                continue
            provider = providers.get(record.dns_account_id)
            if provider is None:
                provider = providers[record.dns_account_id] = self.dns.provider(
                    record.dns_account_id
                )
            try:
                provider.add_txt(record.name, record.value)
            except PermanentError:
                # Refused: nothing was written, so there is nothing to clean up later.
                self.repo.forget_dns_record(record.id)
                raise
            self.repo.mark_dns_record_written(record.id)
            progress(f"{record.identifier}: TXT record {record.name} written")
        return records

    def _account_for(self, cert: Certificate, name: str, target: str) -> int:
        if target != name:
            by_zone = self.repo.dns_account_for(target)
            if by_zone is not None:
                return by_zone
        if cert.dns_account_id is not None:
            return cert.dns_account_id
        by_zone = self.repo.dns_account_for(target)
        if by_zone is None:
            raise PermanentError(
                f"no DNS account serves {target}: make one the default of its zone with "
                "`certbroker dns zones NAME --add ZONE`, or request with --dns-account"
            )
        return by_zone

    def wait_visible(
        self,
        records: Sequence[DnsRecord],
        progress: Progress = no_progress,
        between: Callable[[], None] = lambda: None,
    ) -> float:
        """Until every record is visible at the servers that matter; the seconds it took.
        `between` runs while waiting (an order keeps its lease with it)."""
        checks: list[tuple[Server, str, str]] = []
        providers: dict[int | None, DnsProvider | None] = {}
        for record in records:
            key = record.dns_account_id
            if key not in providers:
                providers[key] = None if key is None else self.dns.provider(key)
            for server in self.dns.check_servers(providers[key], record.name):
                checks.append((server, record.name, record.value))
        if not checks:
            return 0.0
        timeout = self.dns.settings.propagation_timeout
        took = self.dns.lookups.wait_visible(checks, timeout, between)
        servers = sorted({f"{h}:{p}" for (h, p), _, _ in checks})
        progress(f"TXT records visible at {', '.join(servers)} after {took:.2f} s")
        return took

    # -- clean-up ----------------------------------------------------------------------------

    def cleanup(self, order_id: int) -> None:
        self._remove(self.repo.dns_records_of(order_id))

    def sweep(self) -> int:
        removed = self._remove(self.repo.dns_records_to_remove(self.ctx.clock()))
        if removed:
            log.info("removed %d leftover TXT record(s) of ended orders", removed)
        return removed

    def _remove(self, records: Sequence[DnsRecord]) -> int:
        """Remove the records and forget them; the records of a person (manual mode) are
        only forgotten. A removal that fails is retried later. Returns how many records
        were removed."""
        now = self.ctx.clock()
        providers: dict[int, DnsProvider] = {}
        removed = 0
        for record in records:
            if record.dns_account_id is None:
                self.repo.forget_dns_record(record.id)
                continue
            try:
                provider = providers.get(record.dns_account_id)
                if provider is None:
                    provider = self.dns.provider(record.dns_account_id)
                    providers[record.dns_account_id] = provider
                provider.remove_txt(record.name, record.value)
            except NotFoundError:
                log.warning(
                    "TXT record %s of order %d: its DNS account is gone; remove it by hand",
                    record.name,
                    record.order_id,
                )
            except CAError as exc:
                log.warning("could not remove TXT record %s: %s", record.name, exc)
                self.repo.dns_cleanup_failed(record.id, str(exc), now + CLEANUP_RETRY)
                continue
            self.repo.forget_dns_record(record.id)
            removed += 1
        return removed
