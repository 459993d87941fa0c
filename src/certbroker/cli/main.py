"""`certbroker`: the command-line entry point."""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, NoReturn

import typer

# Click's usage errors, as Typer raises them: Typer 0.29 exports no public name for them
# (only BadParameter, Abort, Exit and their base TyperException), and telling them apart
# by their attributes would be guesswork. The tests in tests/unit/test_cli_help.py hold
# what run() makes of them (one line; the help for no arguments).
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError

from certbroker import __version__
from certbroker.cli.lazy import Lazy, LazyGroup
from certbroker.cli.state import State, console_err


class Commands(LazyGroup):
    """certbroker's commands, in the order `certbroker --help` lists them; each module is
    imported only when its command runs (tests/unit/test_cli_help.py holds each help line
    to the command's own)."""

    lazy: ClassVar[Mapping[str, Lazy]] = {
        # In the order a user meets them: run the broker, register an account, request
        # certificates (over DNS-01 after adding a DNS account), see what happened and what
        # keeps failing; then the configuration and the log levels.
        "serve": Lazy(
            "certbroker.cli.main:serve",
            "Run the broker: API, console, HTTP-01 responder, workers, renewals; until stopped.",
        ),
        "account": Lazy(
            "certbroker.cli.accounts:app",
            "ACME accounts: register, import, update, roll over, deactivate.",
        ),
        "cert": Lazy(
            "certbroker.cli.certs:app", "Certificates: request, list, show, export, revoke, delete."
        ),
        "budget": Lazy(
            "certbroker.cli.budgets_cmd:app",
            "Rate-limit budgets per CA: show what is used, set them (orders held, not refused).",
        ),
        "dns": Lazy(
            "certbroker.cli.dns_cmd:app",
            "DNS accounts for dns-01: add, list, show, test, delete; default zones.",
        ),
        "events": Lazy(
            "certbroker.cli.events_cmd:events",
            "What happened, oldest first: issuances, renewals, failed attempts, alarms.",
        ),
        "alarms": Lazy(
            "certbroker.cli.events_cmd:alarms_app",
            "Active alarms: failing certificates, push targets and gateway agents.",
        ),
        "notify": Lazy(
            "certbroker.cli.notify_cmd:app",
            "Mail: test, run, settings, set, log, recipients (expiry, failures, alarms).",
        ),
        "audit": Lazy(
            "certbroker.cli.audit_cmd:audit",
            "The audit log, newest last: who did what, when, from where (admins' record).",
        ),
        "client": Lazy(
            "certbroker.cli.clients_cmd:app",
            "Clients (devices, gateways, servers): add, list, show, allow, set, rotate-token, "
            "disable, enable, delete.",
        ),
        "approvals": Lazy(
            "certbroker.cli.clients_cmd:approvals_app",
            "Clients' CSR requests for names off their allow-list: list, approve, deny.",
        ),
        "target": Lazy(
            "certbroker.cli.targets_cmd:app",
            "Push targets (a directory here, SSH hosts): add, list, show, attach, detach, delete.",
        ),
        "deploy": Lazy(
            "certbroker.cli.targets_cmd:deploy",
            "Deploy a certificate to its push targets now (a failing one starts over).",
        ),
        "webhook": Lazy(
            "certbroker.cli.webhooks_cmd:app",
            "Signed webhooks for events: add, list, show, test, deliveries, retry, delete.",
        ),
        "agent": Lazy(
            "certbroker.cli.agent_cmd:agent",
            "Run the gateway agent: HTTP-01 at the edge, installs what the broker sends.",
        ),
        "user": Lazy(
            "certbroker.cli.access_cmd:users_app",
            "Users of the console and API: add, passwd, list, role, disable, enable, delete.",
        ),
        "token": Lazy(
            "certbroker.cli.access_cmd:tokens_app",
            "API tokens for scripts and tools: create, list, revoke.",
        ),
        "config": Lazy("certbroker.cli.config_cmd:app", "Show the effective configuration."),
        "db": Lazy(
            "certbroker.cli.db_cmd:app",
            "The store: schema status, upgrade; copy into an empty store.",
        ),
        "backup": Lazy(
            "certbroker.cli.db_cmd:backup",
            "Back up the store into a new SQLite file, consistent while `serve` runs on it.",
        ),
        "restore": Lazy(
            "certbroker.cli.db_cmd:restore",
            "Restore a backup into the configured store, which must be empty.",
        ),
        "rotate-master-key": Lazy(
            "certbroker.cli.config_cmd:rotate_master_key",
            "Re-seal every secret of the store with a new master key while `serve` runs.",
        ),
        "log-level": Lazy(
            "certbroker.cli.log_level:log_level",
            "Show each component's log level, or change one at runtime.",
        ),
    }


app = typer.Typer(
    cls=Commands,
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


def serve(ctx: typer.Context) -> None:
    """Run the broker: API, console, HTTP-01 responder, workers, renewals; until stopped.

    Ctrl-C or SIGTERM stops it. The API and console listen on CERTBROKER_LISTEN
    (default 127.0.0.1:8080). On the first start, user `admin` is made with
    CERTBROKER_ADMIN_PASSWORD, or a generated password printed once. With
    CERTBROKER_HTTP01_UPSTREAM=http://host:port the HTTP-01 responder forwards what it
    does not answer to that web server (docs/reverse-proxy.md).

    A database it cannot reach while it starts ends it: exit 1, one line, for a
    supervisor to start it again. Once it serves, it waits for the database to come
    back (docs/operations.md, "When the database goes away")."""
    from certbroker.cli.serve import run_serve

    run_serve(ctx.obj)


def fail(message: str, exit_code: int) -> NoReturn:
    """Print one line, `error: …`, on stderr (never read as markup) and exit."""
    from rich.text import Text

    console_err.print(Text.assemble(("error:", "bold red"), " ", " ".join(message.split())))
    sys.exit(exit_code)


def run() -> None:
    # No garbage collection while the command starts: it makes only objects that live as
    # long as the process. The broker's wiring turns it back on (cli/state.py `started`).
    gc.disable()
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
