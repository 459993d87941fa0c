"""`certbroker cert renew`: renew now and wait, one certificate or all that are due."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from certbroker.cli.certs import _progress, _responder
from certbroker.cli.state import State, console, print_json
from certbroker.domain.errors import CertbrokerError, UsageError
from certbroker.services.issuance import Outcome, RunResult, make_owner


def renew_now(
    state: State, cert_ids: list[int], *, due: bool, all_: bool, force: bool, as_json: bool
) -> None:
    if force and not all_:
        raise UsageError("--force only goes with --all")
    if sum((bool(cert_ids), due, all_)) != 1:
        raise UsageError(
            "say what to renew: certificate IDs, or --due, or --all --force (one of them)"
        )
    if all_ and not force:
        raise UsageError(
            "--all renews every valid certificate now, due or not, and counts against the "
            "CA's rate limits; add --force to confirm"
        )
    broker = state.broker
    owner = make_owner("cli")
    if cert_ids:
        for cert_id in cert_ids:
            broker.certificates.get(cert_id)  # an unknown ID is refused before anything
        for cert_id in cert_ids:
            broker.renewal.renew(cert_id, lease_owner=owner)  # leased to us: serve keeps off
        ids = cert_ids
    else:
        ids = broker.renewal.queue_due() if due else broker.renewal.queue_all()
        if not ids:
            if as_json:
                print_json([])
            else:
                console.print("nothing to renew: no certificate is due")
            return

    def drive(cert_id: int) -> RunResult:
        def progress(message: str) -> None:
            _progress(f"certificate {cert_id}: {message}" if len(ids) > 1 else message)

        # The IDs given by hand are leased to `owner`; queued ones go to whoever is free.
        mine = owner if cert_ids else make_owner("cli")
        return broker.issuance.wait_for(cert_id, mine, progress)

    challenges = {broker.certificates.get(i).challenge for i in ids}
    with _responder(broker, "http-01" if "http-01" in challenges else "dns-01"):
        if cert_ids:
            results = [drive(cert_id) for cert_id in ids]
        else:
            with ThreadPoolExecutor(max_workers=min(state.settings.workers, len(ids))) as pool:
                results = list(pool.map(drive, ids))
    failed = [(i, r) for i, r in zip(ids, results, strict=True) if r.outcome is not Outcome.ISSUED]
    if as_json:
        print_json([broker.certificates.details(i) for i in ids])
    else:
        for cert_id, result in zip(ids, results, strict=True):
            if result.outcome is Outcome.ISSUED:
                cert = broker.certificates.get(cert_id)
                console.print(
                    f"certificate {cert_id} renewed: serial {cert.serial}, valid until "
                    f"{cert.not_after:%Y-%m-%d %H:%M} UTC"
                )
    if len(failed) == 1 and len(ids) == 1:
        ((cert_id, result),) = failed
        what = {
            Outcome.RETRY: "is not issued yet",
            Outcome.AWAITING: "waits for its DNS records",
        }.get(result.outcome, "failed")
        raise CertbrokerError(f"certificate {cert_id} {what}: {result.message}")
    if failed:
        detail = "; ".join(f"certificate {i}: {r.message}" for i, r in failed)
        raise CertbrokerError(f"{len(failed)} of {len(ids)} renewals did not succeed: {detail}")
