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
    from certbroker.logs import COMPONENTS, LEVELS, effective, parse_levels

    state: State = ctx.obj
    settings = state.settings
    runtime_settings = state.broker.runtime
    if reset and (component is None or level is not None):
        raise UsageError("--reset takes a COMPONENT and no LEVEL")
    if component is not None and level is None and not reset:
        raise UsageError(f"give a LEVEL for {component} ({', '.join(LEVELS)}), or --reset")
    if component is not None:
        runtime = runtime_settings.set_log_level(component, None if reset else level)
    else:
        runtime = runtime_settings.log_levels()
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
