"""Console pages for mail: the SMTP settings and a test mail (an admin's), the
mail log, and acknowledging an alarm (an operator's), through the same service as
`certbroker notify` and `certbroker alarms ack`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from certbroker.domain.access import Action
from certbroker.domain.errors import CertbrokerError, UsageError
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
    who,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
CertId = Annotated[int, Path(ge=1, le=2**31 - 1)]
SECURITY = [("starttls", "STARTTLS (587)"), ("tls", "TLS from the start (465)"),
            ("none", "none: plain text (25), a trusted network only")]  # fmt: skip
_RULES = {
    "digest_to": ("digest",),
    "sender": ("sender", "smtp_from"),
    "security": ("security",),
    "port": ("port",),
    "expiry_thresholds": ("expiry_thresholds", "days"),
    "to": ("e-mail address",),
}


def _values(person: Who) -> dict[str, Any]:
    shown = person.broker.notify.settings()
    return {
        "host": shown["host"],
        "port": str(shown["port"] or ""),
        "security": shown["security"],
        "user": shown["user"],
        "sender": shown["sender"],
        "digest_to": "\n".join(shown["digest_to"]),
        "expiry_thresholds": ", ".join(str(d) for d in shown["expiry_thresholds"]),
        "notify_on_issue": shown["notify_on_issue"],
        "password_set": shown["password"] is not None,
        "recipients": shown["recipients"],
        "stored": shown["stored"],
        "to": "",
    }


def _page(request: Request, person: Who, values: dict[str, Any], errors: dict[str, str],
          status: int = 200) -> Response:  # fmt: skip
    deliveries = person.broker.notify.deliveries(50) if person.may(Action.MANAGE) else []
    return render(request, person, "mail.html", status_code=status, values=values,
                  errors=errors, security=SECURITY, deliveries=deliveries)  # fmt: skip


@router.get("/mail")
def mail(request: Request) -> Response:
    person = who(request)
    person.require(Action.MANAGE)  # an admin's settings, as over the API
    return _page(request, person, _values(person), {})


@router.post("/mail")
def change_mail(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values = _values(person)
    shown = dict(values)  # what the page showed: a field left as it was is not stored
    for name in ("host", "port", "security", "user", "sender", "expiry_thresholds"):
        values[name] = text(form, name)
    values["digest_to"] = str(form.get("digest_to") or "").strip()
    values["notify_on_issue"] = form.get("notify_on_issue") == "on"
    changes: dict[str, Any] = {}
    for name in ("host", "port", "security", "user", "sender", "expiry_thresholds"):
        if values[name] != shown[name]:
            changes[name] = values[name] or None
    if values["digest_to"] != shown["digest_to"]:
        changes["digest_to"] = lines(values["digest_to"]) or None
    if values["notify_on_issue"] != shown["notify_on_issue"]:
        changes["notify_on_issue"] = values["notify_on_issue"]
    password = str(form.get("password") or "")
    if password:
        changes["password"] = password
    elif form.get("clear_password") == "on":
        changes["password"] = None
    try:
        person.broker.notify.update_settings(**changes)
    except UsageError as exc:
        return _page(request, person, values, field_errors(str(exc), _RULES), 422)
    return redirect(request, "/mail", "Mail settings saved.")


@router.post("/mail/test")
def test_mail(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    to = text(form, "to")
    try:
        answer = person.broker.notify.send_test(to)
    except CertbrokerError as exc:
        values = {**_values(person), "to": to}
        return _page(request, person, values, {"to": str(exc)}, 422)
    return redirect(request, "/mail", f"Test mail sent to {to}: {answer}")


@router.post("/alarms/{cert_id}/acknowledge")
def acknowledge(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.REQUEST)
    days = text(form, "days") or "1"
    reason = text(form, "reason")
    try:
        if not days.isdigit() or not 0 < int(days) <= 365:
            raise UsageError("mute for 1 to 365 days")
        until = person.broker.ctx.clock() + timedelta(days=int(days))
        person.broker.notify.acknowledge_alarm(cert_id, until, person.principal.name, reason)
    except UsageError as exc:
        return redirect(request, "/alarms", f"Certificate {cert_id}: {exc}", kind="error")
    return redirect(
        request, "/alarms", f"Alarm of certificate {cert_id} acknowledged until {_day(until)}."
    )


def _day(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


@router.post("/certificates/{cert_id}/recipients")
def recipients(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.REQUEST)
    page = f"/certificates/{cert_id}"
    try:
        saved = person.broker.notify.set_recipients(
            cert_id, lines(str(form.get("recipients") or ""))
        )
    except UsageError as exc:
        return redirect(request, page, str(exc), kind="error")
    said = ", ".join(saved) if saved else "the global list"
    return redirect(request, page, f"Its mails go to {said}.")
