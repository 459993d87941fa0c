"""`certbroker`: the command-line entry point."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError

from certbroker import __version__
from certbroker.cli import accounts, certs, config_cmd, dns_cmd, events_cmd, log_level
from certbroker.cli.state import State, console_err

app = typer.Typer(
    name="certbroker",
    help=(
        "An ACME certificate broker: holds ACME accounts, proves control of names, "
        "obtains, stores, exports and revokes certificates for a fleet of endpoints."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(accounts.app, name="account")
app.add_typer(certs.app, name="cert")
app.add_typer(config_cmd.app, name="config")
app.add_typer(dns_cmd.app, name="dns")
app.command("alarms")(events_cmd.alarms)
app.command("events")(events_cmd.events)
app.command("log-level")(log_level.log_level)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"certbroker {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML configuration file (default: ./certbroker.toml when present)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help=(
                "Where the store, master key and files live "
                "(env CERTBROKER_DATA_DIR; default ./var)."
            ),
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level", help="debug, info, warning or error (env CERTBROKER_LOG_LEVEL)."
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    ctx.obj = State(
        config_file=config,
        overrides={"data_dir": data_dir, "log_level": log_level},
    )


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the broker: HTTP-01 responder and issuance workers, until stopped (Ctrl-C / SIGTERM)."""
    from certbroker.cli.serve import run_serve

    run_serve(ctx.obj)


def fail(message: str, exit_code: int) -> NoReturn:
    """Print one line, `error: …`, on stderr (never read as markup) and exit."""
    from rich.text import Text

    console_err.print(Text.assemble(("error:", "bold red"), " ", " ".join(message.split())))
    sys.exit(exit_code)


def run() -> None:
    from certbroker.domain.errors import CertbrokerError

    try:
        code = app(standalone_mode=False)
    except CertbrokerError as exc:
        fail(str(exc), exc.exit_code)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClickUsageError as exc:
        # Typer's own rendering is a box of many lines; ours is one line that names the
        # offending input and where the help is.
        hint = f"; see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
        fail(exc.format_message().rstrip(".") + hint, exc.exit_code)
    except typer.TyperException as exc:
        fail(exc.format_message(), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        console_err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
