"""`certbroker webhook`: signed HTTP POSTs to endpoints of your choice for the events you
pick, retried for a day, with a delivery log and a dead letter (docs/webhooks.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from certbroker.cli.params import number
from certbroker.cli.state import State, console, escape, print_json, say

app = typer.Typer(
    help="Signed webhooks for events: add, list, show, test, deliveries, retry, delete.",
    no_args_is_help=True,
)

WebhookId = Annotated[
    int,
    typer.Argument(
        metavar="ID",
        help="Webhook ID, as `webhook list` shows it.",
        parser=number("a webhook ID (a number, as `certbroker webhook list` shows)"),
    ),
]
DeliveryId = Annotated[
    int,
    typer.Argument(
        metavar="DELIVERY_ID",
        help="Delivery ID, as `webhook deliveries` shows it.",
        parser=number("a delivery ID (a number, as `certbroker webhook deliveries` shows)"),
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
EVENTS_HELP = (
    "Comma-separated: issued, renewed, failed, expiring, revoked, alarm, deployed; or all."
)


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19].replace("T", " ")


def _answer_line(d: dict[str, Any]) -> str:
    if d["last_status"] is not None:
        line = f"the receiver answered {d['last_status']}"
        if d["state"] != "delivered" and d["last_error"]:
            line += f" ({d['last_error']})"
        return line
    return d["last_error"] or "not tried yet"


@app.command("add")
def add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(metavar="URL", help="Where to POST: http(s)://…")],
    events: Annotated[str, typer.Option("--events", metavar="EVENTS", help=EVENTS_HELP)],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="json (Standard Webhooks payload), slack or teams (a chat message).",
        ),
    ] = "json",
    allow_private: Annotated[
        bool,
        typer.Option(
            "--allow-private",
            help="Allow a host at a private, loopback or link-local address (refused "
            "otherwise: server-side request forgery).",
        ),
    ] = False,
    description: Annotated[
        str | None, typer.Option(metavar="TEXT", help="What it is for (shown in lists).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Add a webhook; prints its ID and, on the last line, its signing secret (shown once).

    Each event is POSTed as JSON signed with the secret (webhook-id, webhook-timestamp,
    webhook-signature headers, Standard Webhooks); `serve` sends them and retries for a day.
    """
    state: State = ctx.obj
    webhook, secret = state.broker.webhooks.add(
        url, events, fmt, allow_private=allow_private, description=description
    )
    if as_json:
        print_json({**webhook.to_json(), "secret": secret})
        return
    say(f"webhook {webhook.id} added: {webhook.url} (events: {', '.join(webhook.events)})")
    say("its signing secret, shown only now (verify each request's webhook-signature with it):")
    say(secret)


@app.command("list")
def list_webhooks(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the webhooks (never their secrets)."""
    state: State = ctx.obj
    found = state.broker.webhooks.all()
    if as_json:
        print_json([w.to_json() for w in found])
        return
    if not found:
        console.print("no webhooks; `certbroker webhook add URL --events …` adds one")
        return
    for w in found:
        flags = [w.format.value]
        if w.allow_private:
            flags.append("private allowed")
        if not w.enabled:
            flags.append(f"DISABLED: {w.disabled_reason or 'by a person'}")
        line = f"{w.id:4} {w.url}  events: {', '.join(w.events)}  ({'; '.join(flags)})"
        if w.description:
            line += f"  {w.description}"
        console.print(escape(line))


@app.command("show")
def show(ctx: typer.Context, webhook_id: WebhookId, as_json: AsJson = False) -> None:
    """Show one webhook (never its secret) and its latest deliveries."""
    state: State = ctx.obj
    service = state.broker.webhooks
    data = service.get(webhook_id).to_json()
    recent = [d.to_json() for d in service.deliveries(webhook_id, limit=10)]
    if as_json:
        print_json({**data, "deliveries": recent})
        return
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        console.print(f"[bold]{key:16}[/] {escape(value if value is not None else '-')}")
    console.print("[bold]latest deliveries[/]")
    for d in recent:
        console.print(escape(f"  {d['id']:5} {d['kind']:20} {d['state']:9} {_answer_line(d)}"))
    if not recent:
        console.print("  none yet")


@app.command("delete")
def delete(ctx: typer.Context, webhook_id: WebhookId) -> None:
    """Delete a webhook and its delivery log; nothing more is sent to it."""
    state: State = ctx.obj
    webhook = state.broker.webhooks.delete(webhook_id)
    say(f"webhook {webhook.id} ({webhook.url}) deleted")


@app.command("enable")
def enable(ctx: typer.Context, webhook_id: WebhookId) -> None:
    """Enable a webhook again (one disabled by hand or by a 410 Gone answer)."""
    state: State = ctx.obj
    webhook = state.broker.webhooks.set_enabled(webhook_id, True)
    say(f"webhook {webhook.id} enabled: it gets the events from now on")


@app.command("disable")
def disable(ctx: typer.Context, webhook_id: WebhookId) -> None:
    """Stop sending to a webhook (events meanwhile are not sent later)."""
    state: State = ctx.obj
    webhook = state.broker.webhooks.set_enabled(webhook_id, False)
    say(f"webhook {webhook.id} disabled")


@app.command("test")
def test(ctx: typer.Context, webhook_id: WebhookId, as_json: AsJson = False) -> None:
    """Send a test message (type webhook.test) now and print the receiver's status.

    Exits 1 when the receiver did not answer 2xx."""
    state: State = ctx.obj
    delivery = state.broker.webhooks.test(webhook_id).to_json()
    if as_json:
        print_json(delivery)
    elif delivery["state"] == "delivered":
        say(f"webhook {webhook_id}: {_answer_line(delivery)} (delivery {delivery['id']})")
    else:
        say(f"webhook {webhook_id}: NOT delivered: {_answer_line(delivery)}", err=True)
        if delivery["last_response"]:
            say(f"  its answer: {delivery['last_response'][:300]}", err=True)
    if delivery["state"] != "delivered":
        raise typer.Exit(1)


@app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    webhook: Annotated[
        int | None,
        typer.Option("--webhook", metavar="ID", help="Only this webhook's.", min=1, max=2**31 - 1),
    ] = None,
    state_name: Annotated[
        str | None,
        typer.Option(
            "--state",
            metavar="STATE",
            help="Only these: queued, sending, failed, delivered or dead.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="At most N, newest first.", min=1)
    ] = 100,
    as_json: AsJson = False,
) -> None:
    """The delivery log, newest first: attempts, the receiver's status and answer, errors."""
    state: State = ctx.obj
    found = [d.to_json() for d in state.broker.webhooks.deliveries(webhook, state_name, limit)]
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no deliveries")
        return
    for d in found:
        mark = "DEAD" if d["state"] == "dead" else d["state"]
        line = (
            f"{d['id']:5} webhook {d['webhook_id']:<3} {d['kind']:20} {mark:9} "
            f"attempts {d['attempts']}  last {_when(d['last_attempt_at'])}  {_answer_line(d)}"
        )
        if d["state"] == "failed":
            line += f"  next try {_when(d['next_try_at'])}"
        console.print(escape(line))


@app.command("retry")
def retry(
    ctx: typer.Context,
    delivery_id: DeliveryId,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Send it in this process now and print the result."),
    ] = False,
) -> None:
    """Send a dead (or failing) delivery again: same message ID and body, a new day of retries.

    Without --wait, `serve` sends it within a second or two."""
    state: State = ctx.obj
    service = state.broker.webhooks
    delivery = service.retry(delivery_id)
    if not wait:
        say(f"delivery {delivery.id} queued again (`serve` sends it)")
        return
    sent = service.send_now(delivery.id).to_json()
    if sent["state"] == "delivered":
        say(f"delivery {delivery_id}: {_answer_line(sent)}")
        return
    say(f"delivery {delivery_id}: NOT delivered: {_answer_line(sent)}", err=True)
    raise typer.Exit(1)
