"""Console pages of ACME accounts, DNS accounts, events, alarms, settings, users and
API tokens. Any role reads accounts, events, alarms and settings; changing them, and
users and tokens at all, is the admin's."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.datastructures import FormData

from certbroker.domain.access import Action, Role
from certbroker.domain.directories import DIRECTORY_PRESETS
from certbroker.domain.errors import AccessDenied, CAError, UsageError
from certbroker.domain.keys import KeyType
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
Name = Annotated[str, Path(min_length=1, max_length=200)]

REGISTER_FIELDS: dict[str, tuple[str, ...]] = {
    "agree_tos": ("terms of service", "--agree-tos"),
    "eab_kid": ("external account binding", "--eab"),
    "emails": ("e-mail",),
    "name": ("account name", "--name"),
    "ca_bundle": ("ca_bundle", "pem certificate", "root certificate"),
    "directory_url": ("--directory", "directory"),
}
IMPORT_FIELDS: dict[str, tuple[str, ...]] = {
    "key_pem": ("key",),
    "name": ("account name", "--name"),
    "ca_bundle": ("ca_bundle", "pem certificate"),
    "directory_url": ("--directory", "directory"),
}
DNS_FIELDS: dict[str, tuple[str, ...]] = {
    "name": ("dns account name", "account name", "already exists"),
    "zones": ("zone",),
    "provider": ("provider",),
}
RFC2136_OPTIONS = [
    {"name": "server", "help": "IP[:port] of the primary", "secret": False},
    {"name": "tsig_key_name", "help": "TSIG key name", "secret": False},
    {"name": "tsig_secret", "help": "TSIG secret (base64)", "secret": True},
    {"name": "tsig_algorithm", "help": "default hmac-sha256", "secret": False},
]


def _error_or_ok(request: Request, url: str, work: Any, ok: str) -> Response:
    """Run `work`; back to `url` with `ok`, or with what went wrong."""
    try:
        work()
    except (UsageError, CAError) as exc:
        if isinstance(exc, AccessDenied):
            raise
        return redirect(request, url, str(exc), "error")
    return redirect(request, url, ok)


# -- ACME accounts ------------------------------------------------------------------------------


def _accounts_page(
    request: Request,
    person: Who,
    register: dict[str, Any] | None = None,
    register_errors: dict[str, str] | None = None,
    imported: dict[str, Any] | None = None,
    import_errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        person,
        "accounts.html",
        status_code=status_code,
        accounts=person.broker.accounts.all(),
        presets=DIRECTORY_PRESETS,
        key_types=[k.value for k in KeyType],
        register=register or {"preset": "letsencrypt-staging", "key_type": "ec-p256"},
        register_errors=register_errors or {},
        imported=imported or {"preset": "letsencrypt-staging"},
        import_errors=import_errors or {},
    )


@router.get("/accounts")
def accounts(request: Request) -> Response:
    person = who(request)
    person.require(Action.READ)
    return _accounts_page(request, person)


def _directory(form: FormData) -> str:
    preset = text(form, "preset")
    return preset if preset in DIRECTORY_PRESETS else text(form, "directory_url")


def _bundle(form: FormData) -> str | None:
    from certbroker.services.common import read_ca_bundle

    pem = str(form.get("ca_bundle") or "").strip()
    return read_ca_bundle(pem.encode(), "ca_bundle") if pem else None


@router.post("/accounts")
def register_account(request: Request, form: Form) -> Response:
    from certbroker.services.accounts import Registration

    person = acting(request, form, Action.MANAGE)
    values: dict[str, Any] = {
        name: text(form, name)
        for name in ("preset", "directory_url", "emails", "name", "key_type", "eab_kid")
    }
    values["agree_tos"] = form.get("agree_tos") == "1"
    values["ca_bundle"] = str(form.get("ca_bundle") or "").strip()
    try:
        key_type = KeyType.parse(values["key_type"] or "ec-p256")
        account = person.broker.accounts.register(
            Registration(
                directory=_directory(form),
                emails=lines(values["emails"]),
                agree_tos=bool(values["agree_tos"]),
                key_type=key_type,
                name=values["name"] or None,
                eab_kid=values["eab_kid"] or None,
                eab_hmac_key=text(form, "eab_hmac_key") or None,
                ca_bundle=_bundle(form),
            )
        )
    except UsageError as exc:
        errors = field_errors(str(exc), REGISTER_FIELDS)
        return _accounts_page(
            request, person, register=values, register_errors=errors, status_code=422
        )
    except CAError as exc:
        return _accounts_page(
            request,
            person,
            register=values,
            register_errors={"": f"The CA: {exc}"},
            status_code=502,
        )
    return redirect(request, "/accounts", f"Account {account.name!r} is registered at the CA.")


@router.post("/accounts/import")
def import_account(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values = {name: text(form, name) for name in ("preset", "directory_url", "name")}
    values["key_pem"] = str(form.get("key_pem") or "").strip()
    values["ca_bundle"] = str(form.get("ca_bundle") or "").strip()
    try:
        if not values["key_pem"]:
            raise UsageError("paste the account's key (PEM) to import it")
        account = person.broker.accounts.import_key(
            values["key_pem"].encode(), _directory(form), values["name"] or None, _bundle(form)
        )
    except UsageError as exc:
        errors = field_errors(str(exc), IMPORT_FIELDS)
        return _accounts_page(
            request, person, imported=values, import_errors=errors, status_code=422
        )
    except CAError as exc:
        return _accounts_page(
            request, person, imported=values, import_errors={"": f"The CA: {exc}"}, status_code=502
        )
    return redirect(request, "/accounts", f"Account {account.name!r} is imported.")


@router.post("/accounts/{name}/{action}")
def account_action(request: Request, name: Name, action: str, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    service = person.broker.accounts
    if action == "emails":
        emails = lines(text(form, "emails"))
        return _error_or_ok(
            request, "/accounts", lambda: service.update_emails(name, emails), "E-mails updated."
        )
    if action == "rollover":
        chosen = text(form, "key_type")
        return _error_or_ok(
            request,
            "/accounts",
            lambda: service.rollover(name, KeyType.parse(chosen) if chosen else None),
            f"Account {name!r} has a new key.",
        )
    if action == "refresh":
        return _error_or_ok(
            request, "/accounts", lambda: service.refresh(name), "Status read from the CA."
        )
    if action == "deactivate":
        if form.get("confirm") != "1":
            return redirect(request, "/accounts", "Tick the box to confirm.", "error")
        return _error_or_ok(
            request,
            "/accounts",
            lambda: service.deactivate(name),
            f"Account {name!r} is deactivated at the CA.",
        )
    if action == "delete":
        return _error_or_ok(
            request,
            "/accounts",
            lambda: service.delete(name),
            f"Account {name!r} is forgotten here.",
        )
    raise UsageError(f"no account action {action!r}")


# -- DNS accounts -------------------------------------------------------------------------------


def provider_options(provider: str) -> list[dict[str, Any]]:
    from certbroker.services.dns import dns_provider_options

    if not provider:
        return []
    if provider == "rfc2136":
        return RFC2136_OPTIONS
    try:
        return [asdict(o) for o in dns_provider_options(provider)]
    except UsageError:
        return []


def _dns_page(
    request: Request,
    person: Who,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    from certbroker.services.dns import dns_providers

    values = values or {"provider": request.query_params.get("provider", "")}
    providers = {"rfc2136": True, **dict(sorted(dns_providers().items()))}
    return render(
        request,
        person,
        "dns_accounts.html",
        status_code=status_code,
        accounts=person.broker.dns.accounts(),
        providers=providers,
        options=provider_options(values.get("provider", "")),
        values=values,
        errors=errors or {},
    )


@router.get("/dns-accounts")
def dns_accounts(request: Request) -> Response:
    person = who(request)
    person.require(Action.READ)
    return _dns_page(request, person)


@router.post("/dns-accounts")
def add_dns_account(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    provider = text(form, "provider")
    options = {
        key.removeprefix("opt."): str(value).strip()
        for key, value in form.multi_items()
        if key.startswith("opt.") and str(value).strip()
    }
    values: dict[str, Any] = {
        "name": text(form, "name"),
        "provider": provider,
        "zones": text(form, "zones"),
        "options": {k: v for k, v in options.items()},
    }
    try:
        account = person.broker.dns.add(
            values["name"], provider, options, lines(values["zones"]), environ={}
        )
    except UsageError as exc:
        message = str(exc)
        errors = {}
        for option in provider_options(provider):
            flag = "--" + str(option["name"]).replace("_", "-")
            if flag in message:
                errors[f"opt.{option['name']}"] = message
                break
        else:
            errors = field_errors(message, DNS_FIELDS)
        return _dns_page(request, person, values, errors, 422)
    return redirect(
        request,
        "/dns-accounts",
        f"DNS account {account.name!r} added; its secrets are sealed. Try “Test” to check it.",
    )


@router.post("/dns-accounts/{name}/test")
def test_dns_account(request: Request, name: Name, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    zone = text(form, "zone") or None
    try:
        report = person.broker.dns.test(name, zone)
    except (UsageError, CAError) as exc:
        if isinstance(exc, AccessDenied):
            raise
        return redirect(request, "/dns-accounts", f"Test of {name!r} failed: {exc}", "error")
    seen = (
        f", visible after {report.visible_in:.1f} s at "
        + ", ".join(f"{ip}:{port}" for ip, port in report.servers)
        if report.visible_in is not None
        else " (visibility not checked)"
    )
    return redirect(
        request,
        "/dns-accounts",
        f"Test of {name!r} passed: wrote {report.name} in {report.written_in:.1f} s{seen}, "
        f"removed it in {report.removed_in:.1f} s.",
    )


@router.post("/dns-accounts/{name}/delete")
def delete_dns_account(request: Request, name: Name, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    return _error_or_ok(
        request,
        "/dns-accounts",
        lambda: person.broker.dns.delete(name),
        f"DNS account {name!r} deleted.",
    )


# -- events and alarms --------------------------------------------------------------------------

SINCE = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


@router.get("/events")
def events(request: Request, certificate: str = "", since: str = "") -> Response:
    from certbroker.services.common import utcnow

    person = who(request)
    person.require(Action.READ)
    cert_id = int(certificate) if certificate.isdigit() else None
    start = utcnow() - SINCE[since] if since in SINCE else None
    found = person.broker.certificates.events(cert_id, start, limit=200)
    return render(
        request,
        person,
        "events.html",
        events=[e.to_json() for e in reversed(found)],
        certificate=certificate,
        since=since,
        choices=list(SINCE),
    )


@router.get("/alarms")
def alarms(request: Request) -> Response:
    person = who(request)
    person.require(Action.READ)
    return render(request, person, "alarms.html", alarms=person.broker.browsing.alarms())


# -- settings -----------------------------------------------------------------------------------


@router.get("/settings")
def settings(request: Request) -> Response:
    person = who(request)
    person.require(Action.READ)
    current = person.broker.runtime.broker_settings()
    values = {
        "renew_before_days": ""
        if current["renew_before_days"] is None
        else f"{current['renew_before_days']:g}",
        "notify_to": "\n".join(current["notify_to"]),
        "console_certificate_id": current["console_certificate_id"] or "",
    }
    return render(request, person, "settings.html", values=values, errors={})


@router.post("/settings")
def change_settings(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values = {
        "renew_before_days": text(form, "renew_before_days"),
        "notify_to": str(form.get("notify_to") or "").strip(),
        "console_certificate_id": text(form, "console_certificate_id"),
    }
    errors: dict[str, str] = {}
    days: float | None = None
    if values["renew_before_days"]:
        try:
            days = float(values["renew_before_days"])
        except ValueError:
            errors["renew_before_days"] = "a number of days, e.g. 30; empty: the configured policy"
    cert_id: int | None = None
    if values["console_certificate_id"]:
        if not values["console_certificate_id"].isdigit():
            errors["console_certificate_id"] = "a certificate ID (a number), or empty"
        else:
            cert_id = int(values["console_certificate_id"])
    if not errors:
        try:
            person.broker.runtime.update_broker_settings(
                renew_before_days=days,
                notify_to=lines(values["notify_to"]),
                console_certificate_id=cert_id,
            )
        except UsageError as exc:
            errors = field_errors(
                str(exc),
                {
                    # First: an address may hold any word ("certificate-team@…").
                    "notify_to": ("is not an e-mail address",),
                    "renew_before_days": ("renew_before_days",),
                    "console_certificate_id": ("console_certificate_id", "certificate"),
                },
            )
    if errors:
        return render(
            request, person, "settings.html", status_code=422, values=values, errors=errors
        )
    return redirect(request, "/settings", "Settings saved.")


# -- users and tokens ---------------------------------------------------------------------------

ROLES = [r.value for r in Role]


def _users_page(
    request: Request,
    person: Who,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        person,
        "users.html",
        status_code=status_code,
        users=person.broker.access.users(),
        roles=ROLES,
        values=values or {"role": "viewer"},
        errors=errors or {},
    )


@router.get("/users")
def users(request: Request) -> Response:
    person = who(request)
    person.require(Action.MANAGE)
    return _users_page(request, person)


@router.post("/users")
def add_user(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values = {"name": text(form, "name"), "role": text(form, "role")}
    try:
        user = person.broker.access.add_user(
            values["name"], Role.parse(values["role"]), str(form.get("password") or "")
        )
    except UsageError as exc:
        if isinstance(exc, AccessDenied):
            raise
        errors = field_errors(
            str(exc), {"password": ("password",), "role": ("role",), "name": ("name", "user")}
        )
        return _users_page(request, person, values, errors, 422)
    return redirect(request, "/users", f"User {user.name!r} added ({user.role.value}).")


@router.post("/users/{name}/{action}")
def user_action(request: Request, name: Name, action: str, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    access = person.broker.access
    if action == "role":
        role = text(form, "role")
        return _error_or_ok(
            request,
            "/users",
            lambda: access.set_role(name, Role.parse(role)),
            f"{name} is now {role}.",
        )
    if action in ("enable", "disable"):
        return _error_or_ok(
            request,
            "/users",
            lambda: access.set_enabled(name, action == "enable"),
            f"{name} is {action}d.",
        )
    if action == "password":
        password = str(form.get("password") or "")
        return _error_or_ok(
            request,
            "/users",
            lambda: access.set_password(name, password),
            f"{name} has a new password.",
        )
    if action == "delete":
        return _error_or_ok(
            request, "/users", lambda: access.delete_user(name), f"User {name!r} deleted."
        )
    raise UsageError(f"no user action {action!r}")


def _tokens_page(
    request: Request,
    person: Who,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    created: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        person,
        "tokens.html",
        status_code=status_code,
        tokens=person.broker.access.tokens(),
        roles=ROLES,
        values=values or {"role": "viewer"},
        errors=errors or {},
        created=created,
    )


@router.get("/tokens")
def tokens(request: Request) -> Response:
    person = who(request)
    person.require(Action.MANAGE)
    return _tokens_page(request, person)


@router.post("/tokens")
def create_token(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.MANAGE)
    values = {
        "name": text(form, "name"),
        "role": text(form, "role"),
        "names": text(form, "names"),
        "expires_days": text(form, "expires_days"),
    }
    errors: dict[str, str] = {}
    days: float | None = None
    if values["expires_days"]:
        try:
            days = float(values["expires_days"])
        except ValueError:
            errors["expires_days"] = "a number of days, or empty for no expiry"
    if not errors:
        try:
            token, secret = person.broker.access.create_token(
                values["name"],
                Role.parse(values["role"]),
                lines(values["names"]),
                days,
                created_by=person.principal.name,
                by=person.principal,
            )
        except UsageError as exc:
            errors = field_errors(
                str(exc),
                {"names": ("pattern",), "expires_days": ("expires",), "role": ("role",)},
                "name",
            )
    if errors:
        return _tokens_page(request, person, values, errors, status_code=422)
    return _tokens_page(request, person, created={"token": token, "secret": secret})


@router.post("/tokens/{token_id}/revoke")
def revoke_token(
    request: Request, token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], form: Form
) -> Response:
    person = acting(request, form, Action.MANAGE)
    return _error_or_ok(
        request,
        "/tokens",
        lambda: person.broker.access.revoke_token(token_id),
        f"Token {token_id} revoked; it stops working at once.",
    )
