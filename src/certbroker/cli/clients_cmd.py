"""`certbroker client`: the devices, gateways and servers that obtain certificates for
themselves, each limited to the names on its allow-list."""

from __future__ import annotations

from typing import Annotated

import typer

from certbroker.cli.params import number
from certbroker.cli.state import State, console, escape, print_json, say

app = typer.Typer(
    help="Clients (devices, gateways, servers): add, list, show, allow, set, rotate-token, "
    "disable, enable, delete.",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help="The client's name.")]
Policy = Annotated[
    str | None,
    typer.Option(
        help="For names off the allow-list: deny (refused at once) or approve (wait for an "
        "admin's approval)."
    ),
]

Account = Annotated[
    str | None,
    typer.Option(
        metavar="ACCOUNT",
        help="The ACME account its certificates are ordered with (name or ID); needed when "
        "there are several.",
    ),
]
RenewalOption = Annotated[
    str | None,
    typer.Option(
        metavar="WHO",
        help="Who renews its certificates: device (it sends a fresh CSR when due; the "
        "default) or broker (with the CSR on file).",
    ),
]


def _show(data: dict[str, object]) -> None:
    for key, value in data.items():
        if key == "installations":
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        console.print(f"[bold]{key:17}[/] {escape(value if value is not None else '-')}")
    installed = data.get("installations")
    if isinstance(installed, list) and installed:
        console.print("[bold]installed by its agent[/]")
        for i in installed:
            what = (
                f"serial {i['serial']} since {i['installed_at']}" if i["serial"] else "nothing yet"
            )
            alarm = f"; ALARM: {i['error']}" if i["alarm_since"] else ""
            head = f"  certificate {i['certificate_id']} (key {i['key']}): "
            console.print(head + escape(what + alarm))


@app.command("add")
def add(
    ctx: typer.Context,
    name: Name,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="PATTERN",
            help="A name it may obtain, or '*.zone' for the names below the zone. "
            "Give it several times.",
        ),
    ] = None,
    wildcard: Annotated[
        bool,
        typer.Option("--wildcard", help="Also wildcard certificates for its '*.zone' patterns."),
    ] = False,
    policy: Policy = None,
    account: Account = None,
    renewal: RenewalOption = None,
) -> None:
    """Add a client; its token is printed once, alone on the last line.

    Only a hash of the token is kept: a lost token is replaced with `rotate-token`."""
    from certbroker.domain.clients import ClientPolicy, Renewal

    state: State = ctx.obj
    client, secret = state.broker.clients.add(
        name,
        allow or [],
        wildcard,
        ClientPolicy.parse(policy) if policy else ClientPolicy.DENY,
        account=account,
        renewal=Renewal.parse(renewal) if renewal else Renewal.DEVICE,
    )
    allowed = ", ".join(client.allow) or "no names yet"
    say(f"client {client.name} added (allows {allowed}; policy {client.policy.value}); token:")
    say(secret)


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List clients, what they may obtain and when they were last seen."""
    state: State = ctx.obj
    found = state.broker.clients.all()
    if as_json:
        print_json([c.to_json() for c in found])
        return
    for c in found:
        flags = "" if c.enabled else " (disabled)"
        wild = " +wildcard" if c.wildcard else ""
        seen = f"seen {c.last_seen_at:%Y-%m-%d %H:%M}" if c.last_seen_at else "never seen"
        console.print(
            f"{escape(c.name):20} {c.token_prefix}…  {escape(', '.join(c.allow) or '-')}{wild}; "
            f"{c.policy.value}; {seen}{flags}"
        )


@app.command("show")
def show(
    ctx: typer.Context,
    name: Name,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one client (never its token)."""
    state: State = ctx.obj
    clients = state.broker.clients
    client = clients.get(name)
    data = client.to_json() | {
        "account": clients.account_name(client),
        "installations": state.broker.agents.installations(client),
    }
    if as_json:
        print_json(data)
    else:
        _show(data)


@app.command("allow")
def allow(
    ctx: typer.Context,
    name: Name,
    patterns: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PATTERN", help="Names or '*.zone' to allow besides.", show_default=False
        ),
    ] = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", metavar="PATTERN", help="A pattern to take off the list."),
    ] = None,
    wildcard: Annotated[
        bool | None,
        typer.Option(
            "--wildcard/--no-wildcard",
            help="Allow wildcard certificates for its '*.zone' patterns, or not.",
            show_default=False,
        ),
    ] = None,
    policy: Policy = None,
) -> None:
    """Change what a client may obtain: add patterns, --remove some, --wildcard, --policy."""
    from certbroker.domain.clients import ClientPolicy
    from certbroker.domain.errors import UsageError

    if not patterns and not remove and wildcard is None and policy is None:
        raise UsageError("say what to change: PATTERNs to allow, --remove, --wildcard or --policy")
    state: State = ctx.obj
    client = state.broker.clients.allow(
        name,
        patterns or [],
        remove or [],
        wildcard,
        ClientPolicy.parse(policy) if policy else None,
    )
    wild = " (and wildcards)" if client.wildcard else ""
    say(f"client {client.name} allows {', '.join(client.allow) or 'nothing'}{wild}")


@app.command("set")
def set_(
    ctx: typer.Context,
    name: Name,
    account: Account = None,
    clear_account: Annotated[
        bool,
        typer.Option("--clear-account", help="Order with the only account there is."),
    ] = False,
    renewal: RenewalOption = None,
    policy: Policy = None,
) -> None:
    """Change a client's ACME account, who renews its certificates, or its policy."""
    from certbroker.domain.clients import ClientPolicy, Renewal

    state: State = ctx.obj
    clients = state.broker.clients
    client = clients.set(
        name,
        account=account,
        clear_account=clear_account,
        renewal=Renewal.parse(renewal) if renewal else None,
        policy=ClientPolicy.parse(policy) if policy else None,
    )
    say(
        f"client {client.name}: account {clients.account_name(client) or '(the only one)'}, "
        f"renewal by the {client.renewal.value}, policy {client.policy.value}"
    )


@app.command("rotate-token")
def rotate_token(ctx: typer.Context, name: Name) -> None:
    """Give a client a new token; the old one stops working at once.

    The new token is printed once, alone on the last line."""
    state: State = ctx.obj
    client, secret = state.broker.clients.rotate_token(name)
    say(f"client {client.name}: new token (the old one no longer works):")
    say(secret)


@app.command("disable")
def disable(ctx: typer.Context, name: Name) -> None:
    """Stop a client: its token is refused until it is enabled again."""
    state: State = ctx.obj
    client = state.broker.clients.set_enabled(name, False)
    say(f"client {client.name} disabled")


@app.command("enable")
def enable(ctx: typer.Context, name: Name) -> None:
    """Let a disabled client in again, with the token it had."""
    state: State = ctx.obj
    client = state.broker.clients.set_enabled(name, True)
    say(f"client {client.name} enabled")


@app.command("delete")
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a client and its token."""
    state: State = ctx.obj
    client = state.broker.clients.delete(name)
    say(f"client {client.name} deleted")


approvals_app = typer.Typer(
    help="Clients' CSR requests for names off their allow-list: list, approve, deny.",
    no_args_is_help=True,
)
RequestId = Annotated[
    int,
    typer.Argument(
        metavar="ID",
        help="Request ID, as `approvals list` shows it.",
        parser=number("a request ID (a number, as `certbroker approvals list` shows)"),
    ),
]


@approvals_app.command("list")
def approvals_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests waiting for an admin: which client, which names, since when."""
    from certbroker.domain.clients import RequestState

    state: State = ctx.obj
    broker = state.broker
    waiting = broker.devices.requests_in(RequestState.AWAITING_APPROVAL)
    if as_json:
        print_json([r.to_json() for r in waiting])
        return
    if not waiting:
        say("no request waits for approval")
    names = {c.id: c.name for c in broker.clients.all()}
    for r in waiting:
        console.print(
            f"{r.id:>5}  {escape(names.get(r.client_id, str(r.client_id))):20} "
            f"{escape(', '.join(r.names))}  (since {r.created_at:%Y-%m-%d %H:%M} UTC)"
        )


@approvals_app.command("approve")
def approvals_approve(ctx: typer.Context, request_id: RequestId) -> None:
    """Let a request through: its certificate is obtained (by `serve`)."""
    state: State = ctx.obj
    request = state.broker.devices.approve(request_id, "cli")
    say(f"request {request.id} approved: certificate {request.certificate_id} is queued")


@approvals_app.command("deny")
def approvals_deny(
    ctx: typer.Context,
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="Why, for the client (it sees it).")],
) -> None:
    """Refuse a request, for good (the client may send a new CSR)."""
    state: State = ctx.obj
    request = state.broker.devices.deny(request_id, "cli", reason)
    say(f"request {request.id} denied")
