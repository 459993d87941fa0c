"""`certbroker agent --config FILE`: the gateway agent."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer


def agent(
    ctx: typer.Context,
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            metavar="FILE",
            # Rich markup would take "[certificate]" for a style: escaped, it shows.
            help="The agent's TOML file: broker, token, http01_listen, [\\[certificate]] tables "
            "(docs/agent.md).",
        ),
    ],
) -> None:
    """Run the gateway agent: HTTP-01 at the edge, installs what the broker sends.

    It answers the CA's HTTP-01 requests for its names on http01_listen, installs the
    certificates the broker sends (atomically, then the reload command; the previous
    files back when the reload fails), and reports what it installed; until stopped."""
    from certbroker.agent.config import load_config
    from certbroker.agent.runner import Agent
    from certbroker.logs import setup_logging

    settings = load_config(config)
    level = (ctx.obj.overrides.get("log_level") if ctx.obj else None) or "info"
    setup_logging(str(level))
    runner = Agent(settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runner.stop)
        await runner.run()

    try:
        asyncio.run(main())
    except OSError as exc:
        from certbroker.domain.errors import CertbrokerError

        raise CertbrokerError(
            f"the agent cannot listen on {settings.http01_host}:{settings.http01_port} "
            f"({exc.strerror or exc}); set http01_listen, or run it where it may bind there"
        ) from None
