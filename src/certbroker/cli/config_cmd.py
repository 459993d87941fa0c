"""`certbroker config`: the effective configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from certbroker.cli.state import State, console, escape, print_json, say

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


def rotate_master_key(
    ctx: typer.Context,
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            help="The new key (`config new-master-key` makes one), already given to every "
            "node as CERTBROKER_MASTER_KEY_NEXT; default: a new one, written to the data "
            "directory's master.key."
        ),
    ] = None,
) -> None:
    """Re-seal every secret of the store with a new master key while `serve` runs.

    With master.key in the data directory (one machine): a new key is made, the old one
    kept as master.key.previous, and `serve` picks the new one up by itself. With
    CERTBROKER_MASTER_KEY (several nodes): give the new key to every node as
    CERTBROKER_MASTER_KEY_NEXT first, run this with --new-key-file, then make it their
    CERTBROKER_MASTER_KEY at their next restart."""
    from certbroker.domain.errors import UsageError

    new_key = None
    if new_key_file is not None:
        try:
            new_key = new_key_file.read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --new-key-file: {exc.strerror or exc}") from None
    state: State = ctx.obj
    count, made = state.broker.master_key.rotate(new_key, say)
    if made:
        say(f"re-sealed {count} secrets with a new master key: it is master.key now, the "
            "old one master.key.previous (backups made before need it)")  # fmt: skip
    else:
        say(f"re-sealed {count} secrets with the new master key; make it every node's "
            "CERTBROKER_MASTER_KEY (backups made before need the old one)")  # fmt: skip
