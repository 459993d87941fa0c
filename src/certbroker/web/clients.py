"""Console pages of clients (the devices that send their own CSRs) and of the approvals
their requests for names off the allow-list wait for. Both are the admin's alone, as in
the API and the CLI."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from certbroker.domain.access import Action
from certbroker.domain.clients import ClientPolicy, Renewal, RequestState
from certbroker.domain.errors import AccessDenied, CAError, UsageError
from certbroker.web.common import (
    ConsoleRoute,
    Form,
    Who,
    acting,
    field_errors,
    lines,
    redirect,
    render,
    text,
    texts,
    who,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
ClientName = Annotated[str, Path(min_length=1, max_length=100)]
RequestId = Annotated[int, Path(ge=1, le=2**31 - 1)]
POLICIES = [
    ("deny", "deny: names off the list are refused"),
    ("approve", "approve: names off the list wait for an admin"),
]
RENEWALS = [
    ("device", "by the device: it sends a fresh CSR when due"),
    ("broker", "by the broker, with the CSR on file"),
]
CLIENT_FIELDS: dict[str, tuple[str, ...]] = {
    "account": ("account",),
    "wildcard": ("--wildcard",),
    "name": ("client name", "a client named"),
    "policy": ("policy",),
    "allow": ("pattern", "allow"),
}
CHANGE_FIELDS: dict[str, tuple[str, ...]] = {
    "account": ("account",),
    "wildcard": ("--wildcard",),
    "remove": ("does not allow",),
    "policy": ("policy",),
    "add": ("pattern",),
}


def _clients_page(
    request: Request,
    person: Who,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    created: dict[str, Any] | None = None,
    edit: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    accounts = person.broker.accounts.all()
    clients = person.broker.clients.all()
    return render(
        request,
        person,
        "clients.html",
        status_code=status_code,
        clients=clients,
        installed={c.id: person.broker.agents.installations(c) for c in clients},
        policies=POLICIES,
        renewals=RENEWALS,
        accounts=[("", "the only account there is"), *((a.name, a.name) for a in accounts)],
        account_names={a.id: a.name for a in accounts},
        values=values or {"policy": "deny", "renewal": "device", "account": ""},
        errors=errors or {},
        created=created,
        edit=edit or {"name": None, "values": {}, "errors": {}},
    )


@router.get("/clients")
def clients(request: Request) -> Response:
    person = who(request)
    person.require(Action.MANAGE)
    return _clients_page(request, person)


@router.post("/clients")
def add_client(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values: dict[str, Any] = {
        "name": text(form, "name"),
        "allow": str(form.get("allow") or "").strip(),
        "wildcard": form.get("wildcard") == "1",
        "policy": text(form, "policy") or "deny",
        "account": text(form, "account"),
        "renewal": text(form, "renewal") or "device",
    }
    try:
        client, secret = person.broker.clients.add(
            values["name"],
            lines(values["allow"]),
            bool(values["wildcard"]),
            ClientPolicy.parse(values["policy"]),
            account=values["account"] or None,
            renewal=Renewal.parse(values["renewal"]),
        )
    except UsageError as exc:
        if isinstance(exc, AccessDenied):
            raise
        errors = field_errors(str(exc), CLIENT_FIELDS)
        return _clients_page(request, person, values, errors, status_code=422)
    return _clients_page(
        request, person, created={"client": client, "secret": secret, "rotated": False}
    )


@router.post("/clients/{name}/allow")
def change_client(request: Request, name: ClientName, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values: dict[str, Any] = {
        "add": str(form.get("add") or "").strip(),
        "remove": texts(form, "remove"),
        "wildcard": form.get("wildcard") == "1",
        "policy": text(form, "policy"),
        "account": text(form, "account"),
        "renewal": text(form, "renewal"),
    }
    service = person.broker.clients
    try:
        service.allow(
            name,
            add=lines(values["add"]),
            remove=values["remove"],
            wildcard=bool(values["wildcard"]),
            policy=ClientPolicy.parse(values["policy"]) if values["policy"] else None,
        )
        service.set(
            name,
            account=values["account"] or None,
            clear_account=not values["account"],
            renewal=Renewal.parse(values["renewal"]) if values["renewal"] else None,
        )
    except UsageError as exc:
        if isinstance(exc, AccessDenied):
            raise
        edit = {"name": name, "values": values, "errors": field_errors(str(exc), CHANGE_FIELDS)}
        return _clients_page(request, person, edit=edit, status_code=422)
    return redirect(request, "/clients", f"Client {name!r}: allow-list and settings saved.")


@router.post("/clients/{name}/rotate")
def rotate_client_token(request: Request, name: ClientName, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    client, secret = person.broker.clients.rotate_token(name)
    return _clients_page(
        request, person, created={"client": client, "secret": secret, "rotated": True}
    )


@router.post("/clients/{name}/{action}")
def client_action(request: Request, name: ClientName, action: str, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    service = person.broker.clients
    try:
        if action in ("enable", "disable"):
            service.set_enabled(name, action == "enable")
            return redirect(request, "/clients", f"Client {name!r} is {action}d.")
        if action == "delete":
            confirm = text(form, "confirm")
            if confirm != name:
                edit = {
                    "name": name,
                    "values": {"confirm": confirm},
                    "errors": {"confirm": f"type the client's name, {name}, to delete it"},
                }
                return _clients_page(request, person, edit=edit, status_code=422)
            service.delete(name)
            return redirect(
                request, "/clients", f"Client {name!r} deleted; its token stops working at once."
            )
    except UsageError as exc:
        if isinstance(exc, AccessDenied):
            raise
        return redirect(request, "/clients", str(exc), "error")
    raise UsageError(f"no client action {action!r}")


# -- approvals ----------------------------------------------------------------------------------


def _approvals_page(
    request: Request,
    person: Who,
    denying: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    names = {c.id: c.name for c in person.broker.clients.all()}
    waiting = person.broker.devices.requests_in(RequestState.AWAITING_APPROVAL)
    return render(
        request,
        person,
        "approvals.html",
        status_code=status_code,
        waiting=[{"request": r, "client": names.get(r.client_id, "?")} for r in waiting],
        denying=denying or {"id": None, "reason": "", "error": ""},
    )


@router.get("/approvals")
def approvals(request: Request) -> Response:
    person = who(request)
    person.require(Action.MANAGE)
    return _approvals_page(request, person)


@router.post("/approvals/{request_id}/approve")
def approve(request: Request, request_id: RequestId, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    try:
        decided = person.broker.devices.approve(request_id, person.principal.name)
    except (UsageError, CAError) as exc:
        if isinstance(exc, AccessDenied):
            raise
        return redirect(request, "/approvals", str(exc), "error")
    return redirect(
        request,
        "/approvals",
        f"Request {request_id} approved ({', '.join(decided.names)}); its certificate is "
        "being obtained.",
    )


@router.post("/approvals/{request_id}/deny")
def deny(request: Request, request_id: RequestId, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    reason = text(form, "reason")
    if not reason:
        denying = {"id": request_id, "reason": "", "error": "say why, for the client"}
        return _approvals_page(request, person, denying, status_code=422)
    try:
        person.broker.devices.deny(request_id, person.principal.name, reason)
    except UsageError as exc:
        if isinstance(exc, AccessDenied):
            raise
        if "reason" in str(exc):
            denying = {"id": request_id, "reason": reason, "error": str(exc)}
            return _approvals_page(request, person, denying, status_code=422)
        return redirect(request, "/approvals", str(exc), "error")
    return redirect(request, "/approvals", f"Request {request_id} denied: {reason}")
