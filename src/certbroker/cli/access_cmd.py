"""`certbroker user` and `certbroker token`: who may use the API and the console.

The CLI itself runs with the rights of whoever can read the data directory and master
key: these commands are how the first admin, a forgotten password or a token for a
script come about."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from certbroker.cli.params import number
from certbroker.cli.state import State, console, escape, print_json, say

users_app = typer.Typer(
    help="Users of the console and API: add, passwd, list, role, disable, enable, delete.",
    no_args_is_help=True,
)
tokens_app = typer.Typer(
    help="API tokens for scripts and tools: create, list, revoke.", no_args_is_help=True
)

Role = Annotated[str, typer.Option(help="viewer, operator or admin.")]
TokenId = Annotated[
    int,
    typer.Argument(
        metavar="ID",
        help="Token ID, as `token list` shows it.",
        parser=number("a token ID (a number, as `certbroker token list` shows)"),
    ),
]


def _read_password(stdin: bool) -> str:
    """The new password: from standard input with --password-stdin (one line), else asked
    twice at the terminal."""
    from certbroker.domain.errors import UsageError

    if stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line.strip():
            raise UsageError("no password on standard input; give it as one line")
        return line.rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from standard input (one line) instead of asking.",
    ),
]


@users_app.command("add")
def user_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user's log-in name.")],
    role: Role = "viewer",
    password_stdin: PasswordStdin = False,
) -> None:
    """Add a user who logs in to the console (and API) with a password."""
    from certbroker.domain.access import Role as RoleKind

    state: State = ctx.obj
    parsed = RoleKind.parse(role)
    password = _read_password(password_stdin)
    user = state.broker.access.add_user(name, parsed, password)
    say(f"user {user.name} added ({user.role.value})")


@users_app.command("passwd")
def user_passwd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user's log-in name.")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Set a user's password; the user's console sessions end."""
    state: State = ctx.obj
    access = state.broker.access
    access.user(name)  # an unknown name is refused before the password is asked
    access.set_password(name, _read_password(password_stdin))
    say(f"password of {name} changed; its sessions ended")


@users_app.command("list")
def user_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List users, their roles and whether they may log in."""
    state: State = ctx.obj
    users = state.broker.access.users()
    if as_json:
        print_json([u.to_json() for u in users])
        return
    for u in users:
        flag = "" if u.enabled else "  (disabled)"
        console.print(f"{u.id:>4}  {escape(u.name):24} {u.role.value:9}{flag}")


@users_app.command("role")
def user_role(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user's log-in name.")],
    role: Annotated[str, typer.Argument(help="viewer, operator or admin.")],
) -> None:
    """Change a user's role (the last enabled admin stays admin)."""
    from certbroker.domain.access import Role as RoleKind

    state: State = ctx.obj
    user = state.broker.access.set_role(name, RoleKind.parse(role))
    say(f"user {user.name} is now {user.role.value}")


@users_app.command("disable")
def user_disable(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user's log-in name.")]
) -> None:
    """Stop a user from logging in; their sessions end (not the last enabled admin)."""
    state: State = ctx.obj
    user = state.broker.access.set_enabled(name, False)
    say(f"user {user.name} disabled; their sessions ended")


@users_app.command("enable")
def user_enable(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user's log-in name.")]
) -> None:
    """Let a disabled user log in again."""
    state: State = ctx.obj
    user = state.broker.access.set_enabled(name, True)
    say(f"user {user.name} enabled")


@users_app.command("delete")
def user_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user's log-in name.")]
) -> None:
    """Delete a user (not the last enabled admin)."""
    state: State = ctx.obj
    user = state.broker.access.delete_user(name)
    say(f"user {user.name} deleted")


@tokens_app.command("create")
def token_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="What the token is for, to tell it apart.")],
    role: Role = "viewer",
    names: Annotated[
        list[str] | None,
        typer.Option(
            "--names",
            metavar="PATTERN",
            help="Limit the token to certificates whose names all match: an exact name, or "
            "'*.zone' for names below the zone. Give it several times.",
        ),
    ] = None,
    expires_days: Annotated[
        float | None, typer.Option(help="The token stops working after this many days.")
    ] = None,
) -> None:
    """Create an API token. It is printed once, alone on the last line; only a hash of
    it is kept. Use it as `Authorization: Bearer TOKEN`."""
    from certbroker.domain.access import Role as RoleKind

    state: State = ctx.obj
    token, secret = state.broker.access.create_token(
        name, RoleKind.parse(role), names or [], expires_days, created_by="cli"
    )
    limit = f", limited to {', '.join(token.names)}" if token.names else ""
    expiry = f", expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else ""
    say(f"token {token.id} {token.name!r} ({token.role.value}{limit}{expiry}); shown only now:")
    say(secret)


@tokens_app.command("list")
def token_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List API tokens: role, name limit, expiry, last use (never the tokens)."""
    state: State = ctx.obj
    tokens = state.broker.access.tokens()
    if as_json:
        print_json([t.to_json() for t in tokens])
        return
    for t in tokens:
        limit = ",".join(t.names) or "all names"
        used = (
            f"last used {t.last_used_at:%Y-%m-%d %H:%M} from {t.last_used_from}"
            if t.last_used_at
            else "never used"
        )
        state_text = (
            "revoked"
            if t.revoked_at
            else f"expires {t.expires_at:%Y-%m-%d}"
            if t.expires_at
            else "no expiry"
        )
        console.print(
            f"{t.id:>4}  {escape(t.name):20} {t.role.value:9} {t.prefix}…  "
            f"{escape(limit)}; {state_text}; {used}"
        )


@tokens_app.command("revoke")
def token_revoke(ctx: typer.Context, token_id: TokenId) -> None:
    """Revoke an API token: it stops working at once, on every node."""
    state: State = ctx.obj
    token = state.broker.access.revoke_token(token_id)
    say(f"token {token.id} {token.name!r} revoked")
