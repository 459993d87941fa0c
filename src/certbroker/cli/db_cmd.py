"""`certbroker db`: the store's schema. SQLite brings itself up to date when a process
opens it; PostgreSQL, shared by several nodes, waits for `db upgrade`, run once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from certbroker.cli.state import State, print_json, say

app = typer.Typer(
    help="The store: schema status, upgrade; copy into an empty store.", no_args_is_help=True
)


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


@app.command("copy")
def copy(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Option("--from", help="The store to copy: a database URL, or a SQLite file's path."),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to",
            help="An empty store to copy into (postgresql+psycopg://…, or a SQLite file's "
            "path); its schema is made first.",
        ),
    ],
) -> None:
    """Copy a whole store into an empty one, e.g. a single machine's SQLite file into the
    PostgreSQL database several nodes will share. Secrets stay sealed: the nodes need the
    same master key (`CERTBROKER_MASTER_KEY`, or the data directory's master.key)."""
    from certbroker.wiring import copy_store

    counts, source_at, target_at = copy_store(source, target, say)
    say(f"copied {sum(counts.values())} rows of {source_at} into {target_at}; start the "
        "nodes on it with the same master key as the source's")  # fmt: skip


def backup(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="A new file to write (a SQLite store, mode 0600).")
    ],
) -> None:
    """Back up the store into a new SQLite file, consistent while `serve` runs on it.

    SQLite or PostgreSQL alike. Private keys stay sealed: keep the master key apart from
    the backup."""
    from certbroker.wiring import backup_store

    state: State = ctx.obj
    counts = backup_store(state.settings, out)
    say(f"backed up {counts.get('certificates', 0)} certificates and "
        f"{counts.get('accounts', 0)} accounts ({sum(counts.values())} rows) into {out}; "
        "restore it with `certbroker restore`, with the same master key")  # fmt: skip


def restore(
    ctx: typer.Context,
    backup_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A file `certbroker backup` wrote.")
    ],
) -> None:
    """Restore a backup into the configured store, which must be empty.

    That is a new data directory, or an empty PostgreSQL database. The backup's secrets
    open with the master key they were sealed with: set CERTBROKER_MASTER_KEY or put
    master.key back into the data directory."""
    from certbroker.wiring import restore_store

    state: State = ctx.obj
    counts = restore_store(state.settings, backup_file)
    say(f"restored {counts.get('certificates', 0)} certificates and "
        f"{counts.get('accounts', 0)} accounts ({sum(counts.values())} rows) from "
        f"{backup_file}")  # fmt: skip
