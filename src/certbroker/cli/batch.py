"""Many certificates from one command: `cert request --from FILE` and `cert renew --due`.

A batch file holds one certificate per line, its names separated by spaces or commas
(the first is the common name); blank lines and `#` comments are skipped. Every line is
checked before anything is stored, so a bad line leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from certbroker.cli.drive import drive_many, print_dns_records, progress, refuse_failures
from certbroker.cli.state import State, console, print_json
from certbroker.domain.errors import UsageError
from certbroker.services.issuance import Outcome
from certbroker.services.leases import make_owner
from certbroker.services.requests import CertificateRequest

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
            prepared.append(broker.requests.prepare(dataclasses.replace(template, names=names)))
        except UsageError as exc:
            raise UsageError(f"--from {path}, line {number}: {exc}") from None
    owner = make_owner("cli")
    answering = broker.issuance.answering([template.challenge], progress)
    with answering if wait else contextlib.nullcontext():
        # With --wait, leased to this process from the start, so a running `serve` leaves
        # them alone; without, queued for whoever is free.
        lease = owner if wait else None
        certs = [broker.requests.store(p, lease_owner=lease)[0] for p in prepared]
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
                print_dns_records(cert_id, broker.certificates.details(cert_id))
        if issued:
            print("\n".join(issued))
    refuse_failures(ids, results, "certificates", awaiting_ok=True)


def _span(ids: Sequence[int]) -> str:
    contiguous = list(ids) == list(range(ids[0], ids[0] + len(ids)))
    return f"{ids[0]}-{ids[-1]}" if contiguous and len(ids) > 1 else ", ".join(map(str, ids))
