"""`certbroker alarms` and `certbroker events`: what went wrong, and what happened."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from certbroker.cli.params import CERT_ID_HELP, CertId, number
from certbroker.cli.state import State, console, escape, print_json
from certbroker.domain import when


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 date or time (UTC unless it says otherwise), or an age
    such as 30m, 12h, 7d, 2w."""
    return when.parse_since(text, now, "--since")


alarms_app = typer.Typer(invoke_without_command=True)


@alarms_app.callback()
def alarms(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Active alarms: failing certificates, push targets and gateway agents.

    A certificate whose issuance or renewal keeps failing (`certificate`), a push target
    that keeps failing (`deployment`), a gateway agent that could not install a
    certificate (`install-failed`) or still serves a replaced one (`drift`); each says
    its kind, and its target or client.

    A certificate's alarm clears itself when the next attempt succeeds (`cert renew ID`
    tries now); a push target's when a deploy works (`deploy ID` tries it now); an
    agent's when it reports an install. `alarms ack ID --until 3d --reason …` mutes a
    certificate's alarm until then.
    """
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    found = state.broker.browsing.alarms()
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no active alarms")
        return
    for alarm in found:
        console.print(escape(_alarm_line(alarm)))


def _when(text: str | None) -> str:
    return (text or "?")[:19].replace("T", " ")


def _alarm_line(alarm: dict[str, Any]) -> str:
    """One alarm in one line: what kind, which certificate, which target or client."""
    cert = f"certificate {alarm['certificate_id']} ({', '.join(alarm['names'])})"
    next_try = f" (next try {_when(alarm['next_try_at'])})" if alarm["next_try_at"] else ""
    kind = alarm["kind"]
    if kind == "store-full":  # no certificate: the store itself
        return f"store-full: since {_when(alarm['since'])}: {alarm['last_error']}"
    if kind == "deployment":
        return (
            f"deployment: {cert} to target {alarm['target']}: deploying serial "
            f"{alarm['serial']} failing since {_when(alarm['since'])}: {alarm['last_error']}"
            + next_try
        )
    if kind in ("install-failed", "drift"):
        return (
            f"{kind}: {cert} on client {alarm['client']}'s agent since "
            f"{_when(alarm['since'])}: {alarm['last_error']}"
        )
    ack = alarm["acknowledged"]
    return (
        f"{cert}: failing since {_when(alarm['since'])}: {alarm['last_error']}"
        + next_try
        + (
            f" [acknowledged by {ack['by']} until {ack['until'][:16].replace('T', ' ')}:"
            f" {ack['reason']}]"
            if ack
            else ""
        )
    )


@alarms_app.command("ack")
def ack(
    ctx: typer.Context,
    cert_id: CertId,
    until: Annotated[
        str,
        typer.Option(help="Muted until this date/time (ISO 8601, UTC) or for this long (3d)."),
    ],
    reason: Annotated[str, typer.Option(help="Why: shown with the alarm.")],
) -> None:
    """Acknowledge a certificate's alarm: no mail about it until then; a new kind of
    failure raises it again."""
    from certbroker.cli.notify_cmd import acting_user

    state: State = ctx.obj
    now = state.broker.ctx.clock()
    moment = parse_until(until, now)
    state.broker.notify.acknowledge_alarm(cert_id, moment, acting_user(), reason)
    console.print(
        escape(f"certificate {cert_id}: alarm acknowledged until {moment:%Y-%m-%d %H:%M} UTC")
    )


def parse_until(text: str, now: datetime) -> datetime:
    """`--until`: a date/time, or a duration from now (30m, 12h, 3d, 2w)."""
    return when.parse_until(text, now, "--until")


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
