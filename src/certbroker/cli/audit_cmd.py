"""`certbroker audit`: the audit log, who did what, when and from where."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from certbroker.cli.events_cmd import parse_since
from certbroker.cli.state import State, console, escape, print_json


def audit(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            help="From this date/time (ISO 8601, UTC; 2026-11-30) or age (30m, 12h, 7d) on."
        ),
    ] = None,
    actor: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Only what this user, token, client or OS user (the CLI) did.",
        ),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            metavar="PREFIX",
            help="Only actions starting so: certificate., certificate.export-key, access.refused.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="The newest this many records.")
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The audit log, newest last: who did what, when, from where (admins' record).

    Changes to accounts, DNS accounts, certificates, settings, users, tokens, clients
    and targets; every export of a private key; refused attempts and failed log-ins.
    Append-only; secrets never appear in it.
    """
    state: State = ctx.obj
    broker = state.broker
    moment = parse_since(since, broker.ctx.clock()) if since is not None else None
    found = broker.audit.entries(since=moment, actor=actor, action=action, limit=limit)
    if as_json:
        print_json([e.to_json() for e in found])
        return
    if not found:
        console.print("no audit records")
        return
    for e in found:
        what = f"{e.object_type} {e.object_id}" if e.object_type else "-"
        details = json.dumps(e.details, sort_keys=True, default=str) if e.details else ""
        refused = " REFUSED" if e.outcome.value == "refused" else ""
        console.print(
            escape(
                f"{e.at:%Y-%m-%d %H:%M:%S} {e.actor_kind.value}:{e.actor} "
                f"from {e.address or '-'} {e.action}{refused} {what} {details}".rstrip()
            )
        )
