"""`certbroker account`: ACME accounts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from certbroker.cli.state import State, console, escape, print_json

app = typer.Typer(
    help="ACME accounts: register, import, update, roll over, deactivate.", no_args_is_help=True
)

KEY_TYPES = "ec-p256, ec-p384, rsa2048, rsa3072, rsa4096"


def _read_file(path: Path, what: str) -> bytes:
    from certbroker.domain.errors import UsageError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _ca_bundle(path: Path | None) -> str | None:
    if path is None:
        return None
    from certbroker.services.common import read_ca_bundle

    return read_ca_bundle(_read_file(path, "--ca-bundle"), f"--ca-bundle {path}")


def _print_account(data: dict[str, object]) -> None:
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        console.print(f"[bold]{key:17}[/] {escape(value if value is not None else '-')}")


@app.command("register")
def register(
    ctx: typer.Context,
    directory: Annotated[
        str, typer.Option(help="ACME directory URL, or a preset: letsencrypt, letsencrypt-staging.")
    ],
    email: Annotated[
        list[str], typer.Option("--email", help="Contact e-mail (repeat for several).")
    ] = [],  # noqa: B006
    agree_tos: Annotated[
        bool, typer.Option("--agree-tos", help="Accept the CA's terms of service.")
    ] = False,
    eab_kid: Annotated[str | None, typer.Option(help="External account binding key ID.")] = None,
    eab_hmac_key: Annotated[
        str | None,
        typer.Option(
            envvar="CERTBROKER_EAB_HMAC_KEY",
            show_envvar=True,
            help="External account binding MAC key (base64url); the environment keeps it "
            "out of the process list.",
        ),
    ] = None,
    key_type: Annotated[str, typer.Option(help=f"Account key: {KEY_TYPES}.")] = "ec-p256",
    ca_bundle: Annotated[
        Path | None, typer.Option(help="PEM of the CA's TLS root, for CAs on a private PKI.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name for the account here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Register a new account at an ACME CA."""
    from certbroker.domain.errors import UsageError
    from certbroker.domain.keys import KeyType
    from certbroker.services.accounts import Registration

    if not email:
        raise UsageError("give at least one --email for the CA's expiry and problem notices")
    reg = Registration(
        directory=directory,
        emails=email,
        agree_tos=agree_tos,
        key_type=KeyType.parse(key_type),
        name=name,
        eab_kid=eab_kid,
        eab_hmac_key=eab_hmac_key,
        ca_bundle=_ca_bundle(ca_bundle),
    )
    state: State = ctx.obj
    account = state.broker.accounts.register(reg)
    if as_json:
        print_json(account.to_json())
    else:
        console.print(
            f"registered account [bold]{escape(account.name)}[/] at {escape(account.uri)}"
        )


@app.command("import")
def import_(
    ctx: typer.Context,
    key_file: Annotated[Path, typer.Option(help="The account key: PEM or JWK.")],
    directory: Annotated[str, typer.Option(help="ACME directory URL or preset.")],
    name: Annotated[str | None, typer.Option(help="Name for the account here.")] = None,
    ca_bundle: Annotated[Path | None, typer.Option(help="PEM of the CA's TLS root.")] = None,
) -> None:
    """Adopt an existing account by its key; the CA finds it (onlyReturnExisting)."""
    state: State = ctx.obj
    account = state.broker.accounts.import_key(
        _read_file(key_file, "--key-file"),
        directory,
        name,
        _ca_bundle(ca_bundle),
    )
    console.print(f"imported account [bold]{escape(account.name)}[/] ({escape(account.uri)})")


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the accounts held here."""
    state: State = ctx.obj
    accounts = state.broker.accounts.all()
    if as_json:
        print_json([a.to_json() for a in accounts])
        return
    from rich.table import Table

    table = Table("id", "name", "status", "directory", "emails", "key")
    for a in accounts:
        table.add_row(
            str(a.id),
            escape(a.name),
            a.status.value,
            escape(a.directory_url),
            escape(", ".join(a.emails)),
            a.key_type,
        )
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account name or ID.")],
    refresh: Annotated[bool, typer.Option(help="Ask the CA for the current status first.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one account (never its key)."""
    state: State = ctx.obj
    svc = state.broker.accounts
    found = svc.refresh(account) if refresh else svc.get(account)
    if as_json:
        print_json(found.to_json())
    else:
        _print_account(found.to_json())


@app.command("update")
def update(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account name or ID.")],
    email: Annotated[list[str], typer.Option("--email", help="New contact list (repeat).")],
) -> None:
    """Replace the account's contact e-mails at the CA."""
    state: State = ctx.obj
    found = state.broker.accounts.update_emails(account, email)
    console.print(f"account {escape(found.name)}: contacts now {escape(', '.join(found.emails))}")


@app.command("rollover")
def rollover(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account name or ID.")],
    key_type: Annotated[
        str | None, typer.Option(help=f"Type of the new key (default: same as now): {KEY_TYPES}.")
    ] = None,
) -> None:
    """Replace the account key at the CA (RFC 8555 key change)."""
    from certbroker.domain.keys import KeyType

    state: State = ctx.obj
    found = state.broker.accounts.rollover(account, KeyType.parse(key_type) if key_type else None)
    console.print(f"account {escape(found.name)} now signs with a new {found.key_type} key")


@app.command("recreate")
def recreate(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account name or ID.")],
) -> None:
    """Register the account's key again at its CA, after the CA forgot the account
    (accountDoesNotExist: deleted there, or the CA was reset)."""
    state: State = ctx.obj
    found = state.broker.accounts.recreate(account)
    console.print(
        f"account {escape(found.name)} registered again at {escape(found.uri)}; its failing "
        "certificates are tried again with it"
    )


@app.command("deactivate")
def deactivate(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account name or ID.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
) -> None:
    """End the account at the CA for good. It can never order or renew again."""
    from certbroker.domain.errors import UsageError

    if not yes:
        raise UsageError(
            "deactivation ends the account at the CA for good; repeat with --yes to confirm "
            "(`certbroker account delete` only forgets it here)"
        )
    state: State = ctx.obj
    found = state.broker.accounts.deactivate(account)
    console.print(f"account {escape(found.name)} is deactivated at the CA")


@app.command("delete")
def delete(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account name or ID.")],
) -> None:
    """Forget the account here. It stays active at the CA."""
    state: State = ctx.obj
    found = state.broker.accounts.delete(account)
    console.print(
        f"account {escape(found.name)} deleted here only; it is still active at the CA "
        "(`certbroker account deactivate` ends it there). Keep an exported key to import it again."
    )


@app.command("export-key")
def export_key(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account name or ID.")],
    out: Annotated[Path, typer.Option(help="File to write (created with mode 0600).")],
    key_format: Annotated[str, typer.Option("--format", help="pem or jwk.")] = "pem",
) -> None:
    """Write the account's private key to a file, to import it elsewhere."""
    state: State = ctx.obj
    path = state.broker.accounts.export_key(account, out, key_format)
    console.print(f"account key written to {escape(path)} (mode 0600)")
