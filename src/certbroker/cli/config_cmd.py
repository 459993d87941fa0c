"""`certbroker config`: the effective configuration."""

from __future__ import annotations

from typing import Annotated

import typer

from certbroker.cli.state import State, console, escape, print_json

app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print every setting with its value and where it came from; secrets are masked."""
    state: State = ctx.obj
    shown = state.settings.masked()
    if as_json:
        print_json({k: {"value": v, "source": s} for k, (v, s) in shown.items()})
        return
    from rich.table import Table

    table = Table("setting", "value", "source")
    for key, (value, source) in shown.items():
        table.add_row(key, escape(value), escape(source))
    console.print(table)


@app.command("new-master-key")
def new_master_key() -> None:
    """Print a fresh master key for CERTBROKER_MASTER_KEY (it is not stored anywhere)."""
    from certbroker.services.common import make_master_key

    print(make_master_key())
