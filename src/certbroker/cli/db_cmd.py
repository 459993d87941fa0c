"""`certbroker db`: the store's schema. SQLite brings itself up to date when a process
opens it; PostgreSQL, shared by several nodes, waits for `db upgrade`, run once."""

from __future__ import annotations

from typing import Annotated

import typer

from certbroker.cli.state import State, print_json, say

app = typer.Typer(help="The store's schema: status, upgrade.", no_args_is_help=True)


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The store's schema revision and the one this certbroker needs."""
    from certbroker.wiring import store_schema

    state: State = ctx.obj
    found, needed, where = store_schema(state.settings, upgrade=False)
    if as_json:
        print_json({"store": where, "revision": found, "needed": needed,
                    "current": found == needed})  # fmt: skip
        return
    if found == needed:
        say(f"the store {where} is at schema revision {found}, as this certbroker needs")
    else:
        say(f"the store {where} is at schema revision {found or 'none (empty)'}; this "
            f"certbroker needs {needed}: run `certbroker db upgrade`")  # fmt: skip


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Bring the store's schema to this certbroker's revision (run it once, from one node,
    before starting nodes of a new version; a newer schema is refused)."""
    from certbroker.wiring import store_schema

    state: State = ctx.obj
    found, needed, where = store_schema(state.settings, upgrade=True)
    if found == needed:
        say(f"the store {where} was already at schema revision {needed}")
    else:
        say(f"the store {where}: schema revision {found or 'none (empty)'} -> {needed}")
