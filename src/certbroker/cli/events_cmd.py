"""`certbroker alarms` and `certbroker events`: what went wrong, and what happened."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated

import typer

from certbroker.cli.params import CERT_ID_HELP, number
from certbroker.cli.state import State, console, escape, print_json
from certbroker.domain.errors import UsageError

_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 date or time (UTC unless it says otherwise), or an age
    such as 30m, 12h, 7d, 2w."""
    value = text.strip()
    match = _RELATIVE.match(value.lower())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a date/time (2026-11-22, 2026-11-22T08:00) nor an "
            "age (30m, 12h, 7d, 2w)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)


def alarms(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Active alarms: certificates whose issuance or renewal keeps failing.

    An alarm clears itself when the next attempt succeeds (`cert renew ID` tries now);
    a push target that keeps failing is listed too (`deploy ID` tries it now).
    """
    state: State = ctx.obj
    found = state.broker.certificates.alarms()
    deployments = state.broker.deploy.alarms()
    if as_json:
        print_json(found + [{"kind": "deployment", **d} for d in deployments])
        return
    if not found and not deployments:
        console.print("no active alarms")
        return
    for d in deployments:
        console.print(
            escape(
                f"certificate {d['certificate_id']} to target {d['target']}: deploying "
                f"serial {d['serial']} failing since {d['alarm_since'][:19].replace('T', ' ')}: "
                f"{d['last_error']}"
                + (
                    f" (next try {d['next_try_at'][:19].replace('T', ' ')})"
                    if d["next_try_at"]
                    else ""
                )
            )
        )
    for alarm in found:
        console.print(
            escape(
                f"certificate {alarm['certificate_id']} ({', '.join(alarm['names'])}): "
                f"failing since {alarm['since'][:19].replace('T', ' ')}: {alarm['last_error']}"
                + (
                    f" (next try {alarm['next_try_at'][:19].replace('T', ' ')})"
                    if alarm["next_try_at"]
                    else ""
                )
            )
        )


def events(
    ctx: typer.Context,
    cert: Annotated[
        int | None,
        typer.Option(
            "--cert",
            metavar="ID",
            help="Only this certificate's events.",
            parser=number(CERT_ID_HELP),
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="From this date/time (ISO 8601, UTC) or age (30m, 12h, 7d) on."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What happened, oldest first: issuances, renewals, failed attempts, alarms.

    Each failed attempt carries the CA's problem; alarms show when raised and when cleared.
    """
    state: State = ctx.obj
    broker = state.broker
    moment = parse_since(since, broker.ctx.clock()) if since is not None else None
    if cert is not None:
        broker.certificates.get(cert)  # an unknown ID is an error, not an empty list
    found = broker.certificates.events(cert_id=cert, since=moment)
    if as_json:
        print_json([e.to_json() for e in found])
        return
    if not found:
        console.print("no events")
        return
    for event in found:
        where = f"certificate {event.certificate_id}" if event.certificate_id else "broker"
        console.print(
            escape(f"{event.at:%Y-%m-%d %H:%M:%S} {event.kind.value:15} {where}: {event.message}")
        )
