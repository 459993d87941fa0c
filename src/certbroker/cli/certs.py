"""`certbroker cert`: request, list, show, export, revoke, delete certificates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from certbroker.cli.params import CERT_ID_HELP, CertId, number
from certbroker.cli.state import State, console, escape, print_json, say

app = typer.Typer(
    help="Certificates: request, list, show, export, revoke, delete.", no_args_is_help=True
)

KEY_TYPES = "ec-p256, ec-p384, rsa2048, rsa3072, rsa4096"


@app.command("request")
def request(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAME",
            help="DNS names; the first is the common name.",
            show_default=False,
        ),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            metavar="FILE",
            help="Many certificates at once: one per line, its names separated by spaces or "
            "commas ('#' comments; '-' reads standard input). The other options apply to each.",
        ),
    ] = None,
    account: Annotated[
        list[str] | None,
        typer.Option(
            help="Account name or ID. Give it several times for CA fallback: the next "
            "account (at another CA) takes over when one fails for good or is rate-limited."
        ),
    ] = None,
    challenge: Annotated[
        str, typer.Option(help="Validation method: http-01, or dns-01 (needed for wildcards).")
    ] = "http-01",
    dns_account: Annotated[
        str | None,
        typer.Option(
            help="dns-01: the DNS account to write the TXT records with (default: the "
            "account of each name's zone), or 'manual' to write them yourself."
        ),
    ] = None,
    key_type: Annotated[str | None, typer.Option(help=f"{KEY_TYPES} (default ec-p256).")] = None,
    subject_country: Annotated[str | None, typer.Option(help="Two-letter country code.")] = None,
    subject_state: Annotated[str | None, typer.Option(help="State or province.")] = None,
    subject_city: Annotated[str | None, typer.Option(help="City or locality.")] = None,
    subject_org: Annotated[str | None, typer.Option(help="Organization.")] = None,
    subject_ou: Annotated[str | None, typer.Option(help="Organizational unit.")] = None,
    subject_email: Annotated[str | None, typer.Option(help="E-mail in the subject.")] = None,
    key_policy: Annotated[str, typer.Option(help="new, reuse or imported.")] = "new",
    key_file: Annotated[
        Path | None, typer.Option(help="Private key PEM for --key-policy imported.")
    ] = None,
    renew_before_days: Annotated[
        float | None,
        typer.Option(
            help="Renew this many days before expiry (default: the global policy, else "
            "when a third of the lifetime is left). The CA's ARI window comes first."
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="An ACME profile the CA advertises (e.g. Let's Encrypt's shortlived)."),
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="What people call it (shown in lists and the console).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Why it exists, who owns it.")] = None,
    keystore_type: Annotated[
        str | None,
        typer.Option(
            help="The format downloads default to: pem, fullchain, combined, der, pkcs12 or jks."
        ),
    ] = None,
    keystore_password: Annotated[
        str | None,
        typer.Option(
            envvar="CERTBROKER_KEYSTORE_PASSWORD",
            show_envvar=True,
            help="A pkcs12/jks password kept (encrypted) with the certificate for downloads "
            "and `cert export` (prefer the environment).",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Obtain it now and show progress (otherwise `serve` does it)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Request a certificate, or many with --from. Validates everything before anything is
    stored."""
    from certbroker.domain.errors import UsageError
    from certbroker.domain.keys import ExportFormat, KeyPolicy, KeyType
    from certbroker.domain.models import ChallengeType
    from certbroker.domain.subject import Subject
    from certbroker.services.requests import CertificateRequest

    if bool(names) == (from_file is not None):
        raise UsageError(
            "say what to request: DNS names, or --from FILE with one certificate per line "
            "(one of them)"
        )
    if from_file is not None and key_file is not None:
        raise UsageError(
            "--key-file gives one key, for one certificate; it does not go with --from"
        )
    try:
        policy = KeyPolicy(key_policy)
    except ValueError:
        raise UsageError(
            f"unknown --key-policy {key_policy!r}: choose new, reuse or imported"
        ) from None
    key_pem = None
    if key_file is not None:
        try:
            key_pem = key_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --key-file {key_file}: {exc.strerror or exc}") from None
    subject = Subject(
        country=subject_country,
        state=subject_state,
        city=subject_city,
        org=subject_org,
        ou=subject_ou,
        email=subject_email,
    )
    accounts = account or []
    req = CertificateRequest(
        names=names or [],
        account=accounts[0] if accounts else None,
        fallback_accounts=accounts[1:],
        challenge=ChallengeType.parse(challenge),
        key_type=KeyType.parse(key_type) if key_type is not None else None,
        key_policy=policy,
        key_pem=key_pem,
        subject=subject,
        renew_before_days=renew_before_days,
        profile=profile,
        dns_account=dns_account,
        label=label,
        description=description,
        keystore_type=ExportFormat.parse(keystore_type) if keystore_type else None,
        keystore_password=keystore_password,
    )
    state: State = ctx.obj
    if from_file is not None:
        from certbroker.cli.batch import request_many

        request_many(state, from_file, req, wait=wait, as_json=as_json)
        return
    broker = state.broker
    if not wait:
        cert, order = broker.requests.request(req)
        if as_json:
            print_json(broker.certificates.details(cert.id))
        else:
            say(
                f"certificate {cert.id} queued (order {order.id}); `certbroker serve` obtains it, "
                f"or run `certbroker cert resume {cert.id}`"
            )
        return
    from certbroker.cli.drive import drive_one, progress
    from certbroker.services.leases import make_owner

    owner = make_owner("cli")
    prepared = broker.requests.prepare(req)  # refused before the responder starts
    with broker.issuance.answering([req.challenge], progress):
        # Leased to this process from the start, so a running `serve` leaves it alone.
        cert, _ = broker.requests.store(prepared, lease_owner=owner)
        if not as_json:
            say(f"certificate {cert.id}: obtaining {', '.join(cert.names)}")
        drive_one(broker, cert.id, as_json, owner)


@app.command("verify")
def verify(
    ctx: typer.Context,
    cert_id: CertId,
    new_challenge: Annotated[
        bool,
        typer.Option(
            "--new-challenge",
            help="Start over with a new order at the CA (new TXT values), e.g. when the "
            "old one expired.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Manual dns-01: check the TXT records you wrote are visible, then obtain the certificate."""
    from certbroker.cli.drive import progress, report
    from certbroker.domain.errors import CertbrokerError
    from certbroker.services.issuance import Outcome
    from certbroker.services.leases import make_owner

    state: State = ctx.obj
    broker = state.broker
    result = broker.issuance.verify(cert_id, make_owner("cli"), new_challenge, progress)
    if result.outcome is Outcome.AWAITING and not new_challenge:
        if as_json:
            print_json(broker.certificates.details(cert_id))
        raise CertbrokerError(f"certificate {cert_id}: {result.message}")
    report(broker, cert_id, as_json, result)


@app.command("resume")
def resume(
    ctx: typer.Context,
    cert_id: CertId,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Continue an interrupted or queued order now, or start a new one after a failure."""
    from certbroker.cli.drive import drive_one, progress
    from certbroker.services.leases import make_owner

    state: State = ctx.obj
    broker = state.broker
    if broker.issuance.resume(cert_id):
        progress(f"starting a new order for certificate {cert_id}")
    with broker.issuance.answering_for([cert_id], progress):
        drive_one(broker, cert_id, as_json, make_owner("cli"))


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="pending, valid, failed, revoked or expired.")
    ] = None,
    expiring_within: Annotated[
        int | None,
        typer.Option(
            help="Only valid certificates expiring within DAYS.",
            metavar="DAYS",
            parser=number("a number of days"),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List certificates."""
    from certbroker.domain.errors import UsageError
    from certbroker.domain.models import CertificateStatus

    wanted = None
    if status is not None:
        try:
            wanted = CertificateStatus(status)
        except ValueError:
            choices = ", ".join(s.value for s in CertificateStatus)
            raise UsageError(f"unknown --status {status!r}: choose one of {choices}") from None
    state: State = ctx.obj
    rows = state.broker.certificates.listing(wanted, expiring_within)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no certificates")
        return
    # Plain aligned columns, written at once: Rich's table measured and wrapped every cell
    # (12 s of 14.6 for 10,000 certificates, bench/startup.py) and cut long names short.
    table = [("ID", "NAMES", "STATUS", "NOT AFTER", "DAYS LEFT", "ACCOUNT")]
    for row in rows:
        table.append(
            (
                str(row["id"]),
                ", ".join(row["names"]),
                _status(row),
                (row["not_after"] or "-")[:16].replace("T", " "),
                str(row["days_left"] if row["days_left"] is not None else "-"),
                str(row["account"]),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    sys.stdout.write(
        "".join(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            + "\n"
            for line in table
        )
    )


def _status(row: dict[str, Any]) -> str:
    """The status, and for a failing certificate when it is tried again."""
    text = str(row["status"])
    if row["next_try_at"]:
        text += f", next try {row['next_try_at'][:16].replace('T', ' ')}"
    if row["disabled"]:
        text += ", disabled"
    return text


def _print_details(data: dict[str, Any]) -> None:
    skip = {"attempts", "history", "alarm", "events", "dns_records", "targets"}
    for key, value in data.items():
        if key in skip:
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        console.print(f"[bold]{key:19}[/] {escape(value if value is not None else '-')}")
    if data["dns_records"]:
        console.print("[bold]dns records[/] (of the current order)")
        for record in data["dns_records"]:
            state = "written" if record["written"] else "not written by certbroker"
            console.print(
                escape(
                    f"  {record['name']}. TXT {record['value']} ({record['identifier']}, {state})"
                )
            )
    console.print("[bold]attempts[/]")
    for attempt in data["attempts"]:
        renewal = " (renewal)" if attempt["purpose"] == "renew" else ""
        line = f"  #{attempt['id']} {attempt['state']}{renewal}: queued "
        line += _when(attempt["created_at"])
        for label in ("started", "finished"):
            if attempt[f"{label}_at"]:
                line += f", {label} {_when(attempt[f'{label}_at'])}"
        if attempt["order_url"]:
            line += f" {attempt['order_url']}"
        console.print(escape(line))
        if attempt["error"] and attempt.get("next_run_at"):  # queued: why it waits
            waits = f"waits until {_when(attempt['next_run_at'])}"
            console.print(f"    [yellow]{escape(waits)}:[/] {escape(attempt['error'])}")
        elif attempt["error"]:
            console.print(f"    [red]error:[/] {escape(attempt['error'])}")
        problem = attempt.get("problem")
        if problem:
            console.print(f"    problem: {escape(problem['type'])}")
    if data["alarm"]:
        alarm = data["alarm"]
        console.print(
            f"[bold red]alarm[/] failing since {_when(alarm['since'])}: "
            f"{escape(alarm['last_error'])}"
        )
    if data.get("targets"):
        console.print("[bold]push targets[/] (the latest deployment to each)")
        for item in data["targets"]:
            d = item["deployment"]
            line = f"  {item['target']} ({item['where']}): "
            if d is None:
                line += "nothing deployed yet"
            else:
                when = _when(d["finished_at"] or d["created_at"])
                line += f"serial {d['serial']} {d['state']}, {when}"
                if d["state"] == "failed" and d["next_try_at"]:
                    line += f", next try {_when(d['next_try_at'])}"
            console.print(escape(line))
            if d is not None and d["last_error"] and d["state"] != "done":
                console.print(f"    [red]error:[/] {escape(d['last_error'])}")
    if data["events"]:
        console.print("[bold]events[/] (latest 20; `certbroker events --cert ID` for all)")
        for event in data["events"]:
            console.print(escape(f"  {_when(event['at'])} {event['kind']:15} {event['message']}"))
    if data["history"]:
        console.print("[bold]history[/] (certificates this one replaced, oldest first)")
        for past in data["history"]:
            console.print(
                escape(
                    f"  serial {past['serial']}, valid {_when(past['not_before'])} to "
                    f"{_when(past['not_after'])}; {past['replaced_because']} on "
                    f"{_when(past['replaced_at'])}"
                )
            )


def _when(iso: str) -> str:
    return iso[:19].replace("T", " ")


@app.command("show")
def show(
    ctx: typer.Context,
    cert_id: CertId,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one certificate, with every attempt and the CA's error when one failed."""
    state: State = ctx.obj
    data = state.broker.certificates.details(cert_id)
    data["targets"] = state.broker.deploy.of_certificate(cert_id)
    if as_json:
        print_json(data)
    else:
        _print_details(data)


@app.command("export")
def export(
    ctx: typer.Context,
    cert_id: CertId,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="pem (a directory of parts), fullchain, combined, der, pkcs12, jks."
        ),
    ],
    out: Annotated[Path, typer.Option(help="File (or directory for pem) to write.")],
    password: Annotated[
        str | None,
        typer.Option(
            envvar="CERTBROKER_EXPORT_PASSWORD",
            show_envvar=True,
            help="Password for pkcs12 and jks (prefer the environment or --password-file; "
            "default: the one kept with the certificate).",
        ),
    ] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="Read the pkcs12/jks password from this file instead.")
    ] = None,
) -> None:
    """Write the certificate (and, for some formats, its key) to files. Key files get mode 0600."""
    from certbroker.domain.errors import UsageError
    from certbroker.domain.keys import ExportFormat

    try:
        export_format = ExportFormat(fmt)
    except ValueError:
        choices = ", ".join(f.value for f in ExportFormat)
        raise UsageError(f"unknown --format {fmt!r}: choose one of {choices}") from None
    if password_file is not None:
        try:
            password = password_file.read_text().rstrip("\n")
        except OSError as exc:
            raise UsageError(f"cannot read --password-file: {exc.strerror or exc}") from None
    state: State = ctx.obj
    paths = state.broker.certificates.export(cert_id, export_format, out, password)
    for path in paths:
        console.print(f"wrote {escape(path)}")


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    cert_id: CertId,
    reason: Annotated[
        str,
        typer.Option(
            help="unspecified, keyCompromise, superseded, cessationOfOperation, affiliationChanged."
        ),
    ] = "unspecified",
) -> None:
    """Revoke the certificate at the CA and mark it revoked here."""
    from certbroker.domain.errors import UsageError
    from certbroker.domain.keys import RevocationReason

    try:
        why = RevocationReason(reason)
    except ValueError:
        choices = ", ".join(r.value for r in RevocationReason)
        raise UsageError(f"unknown --reason {reason!r}: choose one of {choices}") from None
    state: State = ctx.obj
    cert = state.broker.certificates.revoke(cert_id, why)
    console.print(f"certificate {cert.id} (serial {cert.serial}) revoked at the CA: {why.value}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    cert_id: CertId,
) -> None:
    """Forget the certificate and its key here. It stays valid at the CA."""
    state: State = ctx.obj
    cert = state.broker.certificates.delete(cert_id)
    tail = (
        " It stays valid at the CA until it expires; `certbroker cert revoke` first if it must not."
        if cert.cert_pem
        else ""
    )
    console.print(f"certificate {cert.id} ({escape(', '.join(cert.names))}) deleted here.{tail}")


@app.command("disable")
def disable(ctx: typer.Context, cert_id: CertId) -> None:
    """Stop retrying and renewing the certificate (an order under way finishes)."""
    state: State = ctx.obj
    cert = state.broker.renewal.disable(cert_id)
    say(
        f"certificate {cert.id} ({', '.join(cert.names)}) disabled: not retried or renewed "
        f"until `certbroker cert enable {cert.id}`"
    )


@app.command("enable")
def enable(ctx: typer.Context, cert_id: CertId) -> None:
    """Retry and renew the certificate again; one that is failing is tried at once."""
    state: State = ctx.obj
    cert = state.broker.renewal.enable(cert_id)
    tail = " `certbroker serve` tries it now." if cert.next_try_at else ""
    say(f"certificate {cert.id} ({', '.join(cert.names)}) enabled.{tail}")


@app.command("renew")
def renew(
    ctx: typer.Context,
    cert_ids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="ID",
            help="Certificates to renew now, due or not.",
            parser=number(CERT_ID_HELP),
        ),
    ] = None,
    due: Annotated[
        bool, typer.Option("--due", help="Renew every certificate whose renewal is due.")
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Renew every valid certificate (needs --force).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --all: yes, renew them all, due or not.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Renew now and wait, showing progress (also retries a failed certificate).

    The current certificate stays in use until the new one is stored; then it is kept
    in the certificate's history (`cert show`).
    """
    from certbroker.cli.renew import renew_now

    renew_now(ctx.obj, cert_ids or [], due=due, all_=all_, force=force, as_json=as_json)
