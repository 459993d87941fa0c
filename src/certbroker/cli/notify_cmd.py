"""`certbroker notify`: mail. The SMTP settings, a test mail, the delivery log, and who a
certificate's mails go to."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated, Any

import typer

from certbroker.cli.params import CertId
from certbroker.cli.state import State, console, escape, print_json, say

app = typer.Typer(
    help="Mail: test, run, settings, set, log, recipients (expiry, failures, alarms).",
    no_args_is_help=True,
)
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("test")
def test(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", metavar="ADDRESS", help="Who gets the test mail.")],
) -> None:
    """Send a test mail now and print the SMTP server's answer.

    A wrong host, port, TLS setting or password is one line saying which.
    """
    state: State = ctx.obj
    answer = state.broker.notify.send_test(to)
    say(f"sent to {to}; the SMTP server answered: {answer}")


def _print(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        console.print(f"[bold]{key:18}[/] {escape(value if value not in (None, '') else '-')}")


@app.command("run")
def run(ctx: typer.Context) -> None:
    """Do once what `serve` does every few seconds: write the expiry warnings that are
    due, queue the mails the new events call for, and send what is due (for a cron job on
    a machine that does not run `serve`)."""
    from certbroker.services.leases import make_owner

    state: State = ctx.obj
    notify = state.broker.notify
    warned = notify.check_expiry()
    notify.queue_mails()
    sent = notify.send_due(make_owner("notify-run"))
    say(f"{warned} expiry warning(s) written, {sent} mail(s) sent")


@app.command("settings")
def settings(ctx: typer.Context, as_json: AsJson = False) -> None:
    """The mail settings in force (`stored` lists those set here or in the console; the
    rest come from the configuration). The password is shown only as set."""
    state: State = ctx.obj
    data = state.broker.notify.settings()
    if as_json:
        print_json(data)
        return
    _print(data)


@app.command("set")
def set_(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="The SMTP server ('' to unset).")] = None,
    port: Annotated[int | None, typer.Option(help="Its port (0: by security).")] = None,
    security: Annotated[str | None, typer.Option(help="none, starttls or tls.")] = None,
    user: Annotated[str | None, typer.Option(help="The SMTP log-in ('' to unset).")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the SMTP password from stdin.")
    ] = False,
    sender: Annotated[
        str | None, typer.Option("--from", metavar="ADDRESS", help="The sender address.")
    ] = None,
    digest_to: Annotated[
        list[str] | None,
        typer.Option(
            "--digest-to",
            metavar="ADDRESS",
            help="A recipient who gets one mail a day instead of one per event; repeat.",
        ),
    ] = None,
    no_digest: Annotated[
        bool, typer.Option("--no-digest", help="Everyone gets one mail per event.")
    ] = False,
    on_issue: Annotated[
        bool | None,
        typer.Option("--on-issue/--not-on-issue", help="Mail every issuance and renewal too."),
    ] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(help="Days left at which expiry is warned about, e.g. 30,14,7,3,1."),
    ] = None,
) -> None:
    """Change mail settings for every process and node (they win over the configuration)."""
    state: State = ctx.obj
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "security": security,
            "user": user,
            "sender": sender,
            "notify_on_issue": on_issue,
            "expiry_thresholds": thresholds,
        }.items()
        if v is not None
    }
    if password_stdin:
        changes["password"] = sys.stdin.readline().rstrip("\n") or None
    if digest_to:
        changes["digest_to"] = digest_to
    elif no_digest:
        changes["digest_to"] = None
    if not changes:
        say("nothing to change: give a setting (see --help)")
        raise typer.Exit(2)
    _print(state.broker.notify.update_settings(**changes))


@app.command("log")
def log(
    ctx: typer.Context,
    state_: Annotated[
        str | None,
        typer.Option("--state", help="Only these: queued, digest, sent, failed, dead."),
    ] = None,
    limit: Annotated[int, typer.Option(help="The newest this many.")] = 50,
    as_json: AsJson = False,
) -> None:
    """The mails, oldest first: to whom, about which event, sent or why not."""
    state: State = ctx.obj
    found = state.broker.notify.deliveries(limit, state_)
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no mails")
        return
    for d in found:
        what = d["answer"] if d["state"] == "sent" else (d["last_error"] or "")
        console.print(
            escape(
                f"{d['created_at'][:19].replace('T', ' ')} #{d['id']} {d['state']:7} "
                f"{d['recipient']} event {d['event_id']} ({d['attempts']} tries) {what}"
            )
        )


@app.command("recipients")
def recipients(
    ctx: typer.Context,
    cert_id: CertId,
    to: Annotated[
        list[str] | None,
        typer.Option("--to", metavar="ADDRESS", help="Who gets this certificate's mails."),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Back to the global list (else the account's).")
    ] = False,
) -> None:
    """Who gets a certificate's mails: its own list, else the global list, else the
    contacts of its ACME account."""
    state: State = ctx.obj
    if not to and not clear:
        say("give --to ADDRESS (repeat for more) or --clear")
        raise typer.Exit(2)
    saved = state.broker.notify.set_recipients(cert_id, [] if clear else (to or []))
    say(f"certificate {cert_id}: mails go to {', '.join(saved) or 'the global list'}")


def acting_user() -> str:
    """Who acknowledges from the CLI: the user on this machine."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "cli"
