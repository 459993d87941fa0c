"""Many certificates from one command: `cert request --from FILE` and `cert renew --due`.

A batch file holds one certificate per line, its names separated by spaces or commas
(the first is the common name); blank lines and `#` comments are skipped. Every line is
checked before anything is stored, so a bad line leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from certbroker.cli.certs import _print_dns_records, _progress, _responder
from certbroker.cli.state import State, console, print_json
from certbroker.domain.errors import CertbrokerError, UsageError
from certbroker.services.issuance import CertificateRequest, Outcome, RunResult, make_owner
from certbroker.wiring import Broker

MAX_BATCH = 10_000


def read_batch(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, names) for each certificate in the file (`-`: standard input)."""
    where = "standard input" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot read --from {where}: {reason}") from None
    found: list[tuple[int, list[str]]] = []
    first_seen: dict[frozenset[str], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        names = line.split("#", 1)[0].replace(",", " ").split()
        if not names:
            continue
        key = frozenset(name.lower().rstrip(".") for name in names)
        if key in first_seen:
            raise UsageError(
                f"--from {where}, line {number}: the same names as line {first_seen[key]}; "
                "give each certificate once"
            )
        first_seen[key] = number
        found.append((number, names))
    if not found:
        raise UsageError(
            f"--from {where} names no certificate: write one per line, its names separated "
            "by spaces or commas"
        )
    if len(found) > MAX_BATCH:
        raise UsageError(
            f"--from {where} has {len(found)} certificates; at most {MAX_BATCH:,} at once"
        )
    return found


def request_many(
    state: State, path: Path, template: CertificateRequest, *, wait: bool, as_json: bool
) -> None:
    """`cert request --from FILE [--wait]`: every line checked (and its key made) first;
    then all stored, and with --wait obtained here, `workers` at a time."""
    lines = read_batch(path)
    broker = state.broker
    prepared = []
    for number, names in lines:
        try:
            prepared.append(broker.issuance.prepare(dataclasses.replace(template, names=names)))
        except UsageError as exc:
            raise UsageError(f"--from {path}, line {number}: {exc}") from None
    owner = make_owner("cli")
    with _responder(broker, template.challenge) if wait else contextlib.nullcontext():
        # With --wait, leased to this process from the start, so a running `serve` leaves
        # them alone; without, queued for whoever is free.
        lease = owner if wait else None
        certs = [broker.issuance.store(p, lease_owner=lease)[0] for p in prepared]
        ids = [cert.id for cert in certs]
        if not wait:
            if as_json:
                print_json([broker.certificates.details(i) for i in ids])
            else:
                console.print(
                    f"{len(ids)} certificates queued (IDs {_span(ids)}); `certbroker serve` "
                    "obtains them, or run `certbroker cert resume ID`"
                )
            return
        if not as_json:
            console.print(f"obtaining {len(ids)} certificates (IDs {_span(ids)})")
        results = drive_many(broker, ids, lambda _: owner, state.settings.workers)
    if as_json:
        print_json([broker.certificates.details(i) for i in ids])
    else:
        issued = []  # one write: Rich's print costs about a millisecond a call
        for cert_id, result in zip(ids, results, strict=True):
            if result.outcome is Outcome.ISSUED:
                cert = broker.certificates.get(cert_id)
                until = cert.not_after.isoformat() if cert.not_after else "?"
                issued.append(
                    f"certificate {cert_id} issued for {', '.join(cert.names)}; valid until {until}"
                )
            elif result.outcome is Outcome.AWAITING:
                _print_dns_records(cert_id, broker.certificates.details(cert_id))
        if issued:
            print("\n".join(issued))
    refuse_failures(ids, results, "certificates", awaiting_ok=True)


def _span(ids: Sequence[int]) -> str:
    contiguous = list(ids) == list(range(ids[0], ids[0] + len(ids)))
    return f"{ids[0]}-{ids[-1]}" if contiguous and len(ids) > 1 else ", ".join(map(str, ids))


def drive_many(
    broker: Broker, ids: Sequence[int], owner_of: Callable[[int], str], workers: int
) -> list[RunResult]:
    """Drive every certificate's order in this process, `workers` at a time."""

    def drive(cert_id: int) -> RunResult:
        def progress(message: str) -> None:
            _progress(f"certificate {cert_id}: {message}" if len(ids) > 1 else message)

        return broker.issuance.wait_for(cert_id, owner_of(cert_id), progress)

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
