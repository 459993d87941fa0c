"""Obtaining certificates in the CLI's own process (`--wait`, `cert renew`, `cert
resume`, `cert verify`): progress on standard error, and one report at the end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from certbroker.cli.state import print_json, say
from certbroker.domain.errors import CertbrokerError
from certbroker.services.issuance import Outcome, RunResult

if TYPE_CHECKING:
    from certbroker.wiring import Broker


def progress(message: str) -> None:
    say(f"  {message}", err=True)


def print_dns_records(cert_id: int, details: dict[str, Any]) -> None:
    lines = [f"certificate {cert_id} waits for these DNS records (manual mode):"]
    lines += [f"  {r['name']}. TXT {r['value']}" for r in details["dns_records"]]
    lines.append(f"write them at your DNS provider, then run `certbroker cert verify {cert_id}`")
    say("\n".join(lines))


def drive_one(broker: Broker, cert_id: int, as_json: bool, owner: str) -> None:
    """Drive the certificate's order here to the end and report it."""
    report(broker, cert_id, as_json, broker.issuance.wait_for(cert_id, owner, progress))


def report(broker: Broker, cert_id: int, as_json: bool, result: RunResult) -> None:
    details = broker.certificates.details(cert_id)
    if as_json:
        print_json(details)
    if result.outcome is Outcome.AWAITING:
        if not as_json:
            print_dns_records(cert_id, details)
        return
    if result.outcome is Outcome.RETRY:
        raise CertbrokerError(f"certificate {cert_id} is not issued yet: {result.message}")
    if result.outcome is not Outcome.ISSUED:
        raise CertbrokerError(f"certificate {cert_id} failed: {result.message}")
    if not as_json:
        say(
            f"certificate {cert_id} issued for {', '.join(details['names'])}; "
            f"valid until {details['not_after']}"
        )


def drive_many(
    broker: Broker, ids: Sequence[int], owner_of: Callable[[int], str], workers: int
) -> list[RunResult]:
    """Drive every certificate's order in this process, `workers` at a time."""

    def drive(cert_id: int) -> RunResult:
        def tell(message: str) -> None:
            progress(f"certificate {cert_id}: {message}" if len(ids) > 1 else message)

        return broker.issuance.wait_for(cert_id, owner_of(cert_id), tell)

    if len(ids) == 1:
        return [drive(ids[0])]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids)))) as pool:
        return list(pool.map(drive, ids))


def refuse_failures(
    ids: Sequence[int], results: Sequence[RunResult], what: str, *, awaiting_ok: bool = False
) -> None:
    """One error naming every certificate that did not get there (`what`: "renewals").

    `awaiting_ok`: one waiting for a person to write its DNS records is not a failure."""
    done = {Outcome.ISSUED, Outcome.AWAITING} if awaiting_ok else {Outcome.ISSUED}
    failed = [(i, r) for i, r in zip(ids, results, strict=True) if r.outcome not in done]
    if len(failed) == 1 and len(ids) == 1:
        ((cert_id, result),) = failed
        state = {
            Outcome.RETRY: "is not issued yet",
            Outcome.AWAITING: "waits for its DNS records",
        }.get(result.outcome, "failed")
        raise CertbrokerError(f"certificate {cert_id} {state}: {result.message}")
    if failed:
        detail = "; ".join(f"certificate {i}: {r.message}" for i, r in failed)
        raise CertbrokerError(f"{len(failed)} of {len(ids)} {what} did not succeed: {detail}")
