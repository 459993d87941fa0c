"""`certbroker dns`: DNS accounts for DNS-01 (RFC 2136 and every dns-lexicon provider)."""

from __future__ import annotations

from typing import Annotated

import typer

from certbroker.cli.state import State, console, escape, print_json

app = typer.Typer(
    help="DNS accounts for dns-01: add, list, show, test, delete; default zones.",
    no_args_is_help=True,
)


def _provider_args(args: list[str]) -> dict[str, str]:
    """`--auth-token X --pdns-server=Y` (the provider's own options) -> {auth_token: X, …}."""
    from certbroker.domain.errors import UsageError

    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise UsageError(
                f"unexpected argument {arg!r}; provider options look like --name VALUE"
            )
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise UsageError(f"option --{name} needs a value")
            value = args[i + 1]
            i += 1
        options[name.replace("-", "_")] = value
        i += 1
    return options


def _print_account(data: dict[str, object]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        console.print(f"[bold]{key:11}[/] {escape(value if value is not None else '-')}")


@app.command(
    "add",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the DNS account.")],
    provider: Annotated[
        str,
        typer.Option(
            help="rfc2136 (BIND, PowerDNS, Knot… with TSIG) or any dns-lexicon provider: "
            "cloudflare, route53, azure, godaddy, cloudns, powerdns… (`certbroker dns providers`)."
        ),
    ],
    server: Annotated[
        str | None, typer.Option(help="rfc2136: the zone's primary server, HOST[:PORT].")
    ] = None,
    tsig_key_name: Annotated[str | None, typer.Option(help="rfc2136: TSIG key name.")] = None,
    tsig_secret: Annotated[
        str | None,
        typer.Option(
            envvar="CERTBROKER_DNS_TSIG_SECRET",
            show_envvar=True,
            help="rfc2136: TSIG secret (base64, as tsig-keygen prints it); the environment "
            "keeps it out of the process list.",
        ),
    ] = None,
    tsig_algorithm: Annotated[
        str | None, typer.Option(help="rfc2136: hmac-sha256 (default), hmac-sha384, hmac-sha512.")
    ] = None,
    zone: Annotated[
        list[str],
        typer.Option(
            "--zone", help="Make this account the default for ZONE and its subdomains (repeat)."
        ),
    ] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Add a DNS account. Provider options (e.g. --auth-token for cloudflare) follow the
    provider's own names, or come from its LEXICON_<PROVIDER>_<OPTION> environment
    variables; docs/dns-providers.md lists them. Secrets are stored encrypted."""
    state: State = ctx.obj
    options = _provider_args(list(ctx.args))
    for key, value in (
        ("server", server),
        ("tsig_key_name", tsig_key_name),
        ("tsig_secret", tsig_secret),
        ("tsig_algorithm", tsig_algorithm),
    ):
        if value is not None:
            options[key] = value
    account = state.broker.dns.add(name, provider, options, zone)
    if as_json:
        print_json(account.to_json())
        return
    zones = f", default for {', '.join(account.zones)}" if account.zones else ""
    console.print(f"DNS account {escape(account.name)} added ({escape(account.provider)}{zones})")
    console.print(f"try it now: certbroker dns test {escape(account.name)} --zone ZONE")


@app.command("list")
def list_accounts(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List DNS accounts (secrets masked)."""
    state: State = ctx.obj
    accounts = state.broker.dns.accounts()
    if as_json:
        print_json([a.to_json() for a in accounts])
        return
    if not accounts:
        console.print("no DNS accounts; add one with `certbroker dns add`")
        return
    from rich.table import Table

    table = Table(box=None)
    for column in ("NAME", "PROVIDER", "ZONES", "OPTIONS"):
        table.add_column(column)
    for account in accounts:
        data = account.to_json()
        options = ", ".join(f"{k}={v}" for k, v in data["options"].items())
        table.add_row(
            escape(account.name),
            escape(account.provider),
            escape(", ".join(account.zones) or "-"),
            escape(options),
        )
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="DNS account name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one DNS account (secrets masked)."""
    state: State = ctx.obj
    data = state.broker.dns.get(name).to_json()
    if as_json:
        print_json(data)
    else:
        _print_account(data)


@app.command("test")
def test(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="DNS account name.")],
    zone: Annotated[
        str | None, typer.Option(help="Zone to write the test record in (default: its zone).")
    ] = None,
) -> None:
    """Write a test TXT record, wait until it is visible, and remove it."""
    state: State = ctx.obj

    def progress(message: str) -> None:
        console.print(escape(message))

    report = state.broker.dns.test(name, zone, progress)
    check = "" if report.visible_in is not None else " (propagation check off)"
    console.print(f"DNS account {escape(report.account)} works{check}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="DNS account name.")],
) -> None:
    """Delete a DNS account and its secrets."""
    state: State = ctx.obj
    account = state.broker.dns.delete(name)
    console.print(f"DNS account {escape(account.name)} deleted")


@app.command("zones")
def zones(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="DNS account name.")],
    add: Annotated[
        list[str], typer.Option("--add", help="Make the account the default for ZONE.")
    ] = [],  # noqa: B006
    remove: Annotated[
        list[str], typer.Option("--remove", help="Stop being the default for ZONE.")
    ] = [],  # noqa: B006
) -> None:
    """Show or change the zones a DNS account is the default for."""
    state: State = ctx.obj
    service = state.broker.dns
    account = service.set_zones(name, add, remove) if add or remove else service.get(name)
    console.print(f"{escape(account.name)}: {escape(', '.join(account.zones) or 'no zones')}")


@app.command("providers")
def providers(
    provider: Annotated[
        str | None, typer.Argument(help="Show the options of this provider.")
    ] = None,
) -> None:
    """List the DNS providers, or one provider's options and environment variables."""
    from certbroker.services.dns import dns_provider_options, dns_providers

    if provider is None:
        console.print("rfc2136 (certbroker's own: BIND, PowerDNS, Knot, Windows DNS…)")
        for name, usable in sorted(dns_providers().items()):
            note = "" if usable else f"  (needs: pip install 'dns-lexicon[{name}]')"
            console.print(f"{escape(name)}{escape(note)}")
        return
    if provider == "rfc2136":
        console.print(
            "--server HOST[:PORT]  --tsig-key-name NAME  --tsig-secret BASE64 "
            "(env CERTBROKER_DNS_TSIG_SECRET)  --tsig-algorithm hmac-sha256|hmac-sha384|"
            "hmac-sha512  --zone ZONE"
        )
        return
    for option in dns_provider_options(provider):
        secret = " (secret)" if option.secret else ""
        console.print(
            f"--{option.name.replace('_', '-')}  env {option.env}{secret}: {escape(option.help)}"
        )
