"""`certbroker budget`: the rate-limit budgets per CA, what each account and registered
domain has used of them, and setting them (Let's Encrypt's are built in)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from certbroker.cli.state import State, console, escape, print_json, say

app = typer.Typer(
    help="Rate-limit budgets per CA: show what is used, set them (orders held, not refused).",
    no_args_is_help=True,
)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each CA's budgets, what its accounts and registered domains used of them in the
    window, and any hold the CA itself asked for (a rateLimited answer)."""
    state: State = ctx.obj
    usage = state.broker.budgets.usage()
    if as_json:
        print_json(usage)
        return
    for ca in usage["cas"]:
        where = " (set here)" if ca["set_here"] else ""
        console.print(f"[bold]{escape(ca['ca'])}[/]{where}")
        console.print(
            f"  new orders per account: {ca['orders_per_account'] or 'not counted'}; "
            f"certificates per registered domain: {ca['certificates_per_domain'] or 'not counted'}"
        )
        for scope in ca["scopes"]:
            console.print("  " + escape(_scope_line(scope)))
    for hold in usage["ca_holds"]:
        console.print(
            f"[yellow]held by the CA[/] {escape(hold['ca'])} {escape(hold['scope'])} until "
            f"{escape(hold['until'])}: {escape(hold['reason'])}"
        )


def _scope_line(scope: dict[str, Any]) -> str:
    kind, _, _ = scope["scope"].partition(":")
    what = f"account {scope['name']}" if kind == "account" else f"domain {scope['name']}"
    line = f"{what}: {scope['used']} in the window"
    if scope["budget"]:
        line += f" of {scope['budget']}"
    if scope["full_until"]:
        line += f" — full; the next order waits until {scope['full_until']}"
    return line


@app.command("set")
def set_budget(
    ctx: typer.Context,
    ca: Annotated[
        str,
        typer.Argument(
            metavar="CA",
            help="The CA's directory URL, or the name of an account whose CA it is.",
        ),
    ],
    orders_per_account: Annotated[
        str | None,
        typer.Option(
            "--orders-per-account",
            help="New orders each account may send, as COUNT/WINDOW (300/3h), 'none' not to "
            "count, 'default' for the built-in one.",
        ),
    ] = None,
    certificates_per_domain: Annotated[
        str | None,
        typer.Option(
            "--certificates-per-domain",
            help="Certificates per registered domain over every account, as COUNT/WINDOW "
            "(50/7d), 'none', or 'default'.",
        ),
    ] = None,
) -> None:
    """Set a CA's budgets (kept in the store: every node uses them). An order that would
    go past one waits in the queue until the window has room."""
    from certbroker.domain.errors import UsageError

    changes: dict[str, str | None] = {}
    for field, value in (
        ("orders_per_account", orders_per_account),
        ("certificates_per_domain", certificates_per_domain),
    ):
        if value is not None:
            changes[field] = None if value.strip().lower() == "default" else value
    if not changes:
        raise UsageError("nothing to set: give --orders-per-account or --certificates-per-domain")
    state: State = ctx.obj
    url, budgets = state.broker.budgets.set(ca, changes)
    say(
        f"{url}: new orders per account {budgets.orders_per_account or 'not counted'}, "
        f"certificates per registered domain {budgets.certificates_per_domain or 'not counted'}"
    )
