"""The console's audit log page (admins only): who did what, when, from where."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from certbroker.domain.access import Action
from certbroker.domain.errors import UsageError
from certbroker.domain.when import parse_since
from certbroker.web.common import ConsoleRoute, query, render, who

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

SINCE_CHOICES = ("1h", "24h", "7d", "30d")


@router.get("/audit")
def audit(
    request: Request,
    since: str = Query("", max_length=40),
    actor: str = Query("", max_length=200),
    action: str = Query("", max_length=100),
    cursor: str = Query("", max_length=200),
) -> Response:
    person = who(request)
    person.require(Action.MANAGE)
    broker = person.broker
    error = None
    try:
        start = parse_since(since, broker.ctx.clock(), "Since") if since else None
    except UsageError as exc:
        error, start = str(exc), None
    page = broker.audit.page(
        since=start, actor=actor.strip(), action=action.strip(), cursor=cursor or None, limit=100
    )
    next_url = (
        query("/audit", since=since, actor=actor, action=action, cursor=page.next)
        if page.next
        else None
    )
    return render(
        request,
        person,
        "audit.html",
        entries=[e.to_json() for e in page.entries],
        since=since,
        actor=actor,
        action=action,
        choices=SINCE_CHOICES,
        next_url=next_url,
        first_url=query("/audit", since=since, actor=actor, action=action) if cursor else None,
        error=error,
    )
