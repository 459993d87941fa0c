"""`certbroker log-level`: see or change per-component log levels while `serve` runs."""

from __future__ import annotations

from typing import Annotated

import typer

from certbroker.cli.state import State, console, print_json
from certbroker.domain.errors import UsageError


def log_level(
    ctx: typer.Context,
    component: Annotated[
        str | None,
        typer.Argument(help="acme, challenges, scheduler, workers, api or deploy."),
    ] = None,
    level: Annotated[str | None, typer.Argument(help="debug, info, warning or error.")] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Back to the configured level for COMPONENT.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each component's log level, or change one at runtime.

    The change is stored, and every `serve` process on the store (and on other nodes)
    applies it within a few seconds, until `--reset` or another change. The ACME HTTP
    exchange appears with `acme debug`; private keys never do.
    """
    from certbroker.logs import (
        COMPONENTS,
        LEVELS,
        RUNTIME_KEY,
        effective,
        format_levels,
        parse_levels,
    )

    state: State = ctx.obj
    settings = state.settings
    repo = state.broker.repo
    if component is not None and component.lower() not in COMPONENTS:
        raise UsageError(f"unknown component {component!r}: choose one of {', '.join(COMPONENTS)}")
    if level is not None and level.lower() not in LEVELS:
        raise UsageError(f"unknown level {level!r}: choose one of {', '.join(LEVELS)}")
    if reset and (component is None or level is not None):
        raise UsageError("--reset takes a COMPONENT and no LEVEL")
    if component is not None and level is None and not reset:
        raise UsageError(f"give a LEVEL for {component} ({', '.join(LEVELS)}), or --reset")
    runtime = parse_levels(repo.get_setting(RUNTIME_KEY) or "", "stored log levels")
    if component is not None:
        name = component.lower()
        if reset:
            runtime.pop(name, None)
        else:
            runtime[name] = str(level).lower()
        repo.set_setting(RUNTIME_KEY, format_levels(runtime), state.broker.ctx.clock())
    configured = parse_levels(settings.log_levels)
    levels = effective(settings.log_level, {**configured, **runtime})
    shown = {
        c: {
            "level": levels[c],
            "source": "runtime" if c in runtime else "config" if c in configured else "default",
        }
        for c in COMPONENTS
    }
    if as_json:
        print_json(shown)
        return
    for c, info in shown.items():
        console.print(f"{c:11} {info['level']:8} ({info['source']})")
