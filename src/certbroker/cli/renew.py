"""`certbroker cert renew`: renew now and wait, one certificate or all that are due."""

from __future__ import annotations

from certbroker.cli.drive import drive_many, progress, refuse_failures
from certbroker.cli.state import State, console, print_json
from certbroker.domain.errors import UsageError
from certbroker.services.issuance import Outcome
from certbroker.services.leases import make_owner


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

    with broker.issuance.answering_for(ids, progress):
        # The IDs given by hand are leased to `owner`, one after the other; queued ones go
        # to whoever is free, several at a time.
        if cert_ids:
            results = drive_many(broker, ids, lambda _: owner, 1)
        else:
            results = drive_many(broker, ids, lambda _: make_owner("cli"), state.settings.workers)
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
    refuse_failures(ids, results, "renewals")
