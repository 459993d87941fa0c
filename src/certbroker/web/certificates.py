"""Console pages of certificates: the table, the request form, the detail page with its
live progress, and the actions (renew, revoke, delete, disable, enable, download,
manual DNS verification)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.datastructures import FormData

from certbroker.domain.access import Action
from certbroker.domain.errors import CAError, UsageError
from certbroker.domain.keys import ExportFormat, KeyPolicy, KeyType, RevocationReason
from certbroker.domain.models import CertificateStatus, ChallengeType
from certbroker.domain.names import validate_names
from certbroker.domain.subject import Subject
from certbroker.web.common import (
    ConsoleRoute,
    Form,
    Who,
    acting,
    field_errors,
    lines,
    query,
    redirect,
    render,
    text,
    texts,
    who,
)

log = logging.getLogger("certbroker.api")
router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

CertId = Annotated[int, Path(ge=1, le=2**31 - 1)]
SORTS = {"id": "ID", "name": "Names", "expires": "Expires", "created": "Requested"}
SUBJECT_FIELDS = (
    ("country", "Country (2 letters)"),
    ("state", "State or province"),
    ("city", "City"),
    ("org", "Organization"),
    ("ou", "Organizational unit"),
    ("email", "E-mail"),
)
REVOCATION_REASONS = {
    "unspecified": "Unspecified",
    "keyCompromise": "Key compromise",
    "affiliationChanged": "Affiliation changed",
    "superseded": "Superseded",
    "cessationOfOperation": "Cessation of operation",
}
FORMATS = {
    "pem": "PEM files (zip: certificate, chain, full chain, key when held)",
    "fullchain": "Full chain (PEM, no key)",
    "combined": "Combined (PEM: key + full chain, for HAProxy)",
    "der": "DER (certificate only)",
    "pkcs12": "PKCS#12 (.p12, with key)",
    "jks": "Java KeyStore (.jks, with key)",
}

# Which form field a message of the request service is about (first match wins).
REQUEST_FIELDS: dict[str, tuple[str, ...]] = {
    "key_pem": ("--key-file", "key file", "imported"),
    "key_type": ("--key-type", "key type"),
    "renew_before_days": ("renew-before-days", "renew_before_days"),
    "profile": ("--profile", "profile"),
    "keystore_password": ("keystore password",),
    "keystore_type": ("keystore",),
    "label": ("label",),
    "description": ("description",),
    "dns_account": ("dns account", "dns-account", "manual dns", "zone"),
    "fallback_accounts": ("named twice",),
    "account": ("account",),
    "challenge": ("challenge",),
}


# -- the table ----------------------------------------------------------------------------------


@router.get("/certificates")
def certificate_list(
    request: Request,
    status: str = "",
    search: str = "",
    expiring_within: str = "",
    sort: str = "id",
    cursor: str = "",
) -> Response:
    person = who(request)
    person.require(Action.READ)
    broker = person.broker
    errors: list[str] = []
    status_value = CertificateStatus(status) if status in set(CertificateStatus) else None
    within: int | None = None
    if expiring_within:
        try:
            within = int(expiring_within)
        except ValueError:
            errors.append("“Expiring within” takes a number of days.")
    key = sort.removeprefix("-")
    if key not in SORTS:
        sort, key = "id", "id"
    try:
        page = broker.browsing.page(
            status=status_value,
            search=search or None,
            expiring_within_days=within,
            sort=sort,
            limit=50,
            cursor=cursor or None,
        )
        items, next_cursor = page.items, page.next
    except UsageError as exc:
        errors.append(str(exc))
        items, next_cursor = [], None
    accounts = {a.id: a for a in broker.accounts.all()}
    rows = [broker.certificates.summary(c, accounts) for c in items]
    filters = {"status": status, "search": search, "expiring_within": expiring_within}

    def sort_link(column: str) -> str:
        order = f"-{column}" if sort == column else column
        return query("/certificates", **filters, sort=order)

    return render(
        request,
        person,
        "certificates.html",
        rows=rows,
        filters=filters,
        sort=sort,
        sort_key=key,
        descending=sort.startswith("-"),
        sorts=SORTS,
        sort_link=sort_link,
        statuses=[s.value for s in CertificateStatus],
        next_url=query("/certificates", **filters, sort=sort, cursor=next_cursor)
        if next_cursor
        else None,
        first_url=query("/certificates", **filters, sort=sort) if cursor else None,
        errors=errors,
    )


# -- the request form ---------------------------------------------------------------------------


def _form_choices(person: Who) -> dict[str, Any]:
    broker = person.broker
    return {
        "accounts": [a for a in broker.accounts.all() if a.status.value == "valid"],
        "dns_accounts": broker.dns.accounts(),
        "key_types": [k.value for k in KeyType],
        "formats": FORMATS,
        "subject_fields": SUBJECT_FIELDS,
    }


def _request_page(
    request: Request,
    person: Who,
    values: dict[str, Any],
    errors: dict[str, str],
    status_code: int = 200,
) -> Response:
    return render(
        request,
        person,
        "request.html",
        status_code=status_code,
        values=values,
        errors=errors,
        **_form_choices(person),
    )


@router.get("/certificates/new")
def request_form(request: Request) -> Response:
    person = who(request)
    person.require(Action.REQUEST)
    values = {"challenge": "http-01", "key_type": "ec-p256", "key_policy": "new", "names": ""}
    return _request_page(request, person, values, {})


def _form_values(form: FormData) -> dict[str, Any]:
    values: dict[str, Any] = {
        name: text(form, name)
        for name in (
            "label",
            "names",
            "account",
            "challenge",
            "dns_account",
            "key_type",
            "key_policy",
            "renew_before_days",
            "profile",
            "keystore_type",
        )
    }
    values["description"] = str(form.get("description") or "").strip()
    values["key_pem"] = str(form.get("key_pem") or "").strip()
    values["keystore_password"] = str(form.get("keystore_password") or "")
    values["fallback_accounts"] = texts(form, "fallback_accounts")
    for name, _label in SUBJECT_FIELDS:
        values[name] = text(form, name)
    return values


def _build_request(values: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """The CertificateRequest of the form, or the errors by field."""
    from certbroker.services.requests import CertificateRequest

    errors: dict[str, str] = {}
    try:
        challenge = ChallengeType.parse(values["challenge"] or "http-01")
    except UsageError as exc:
        return None, {"challenge": str(exc)}
    names = lines(values["names"])
    try:
        validate_names(names, challenge)
    except UsageError as exc:
        errors["names"] = str(exc)
    subject_values = {name: values[name] or None for name, _ in SUBJECT_FIELDS}
    subject = None
    for name, value in subject_values.items():
        if value is None:
            continue
        try:
            Subject(**{name: value})
        except UsageError as exc:
            errors[name] = str(exc)
    if not any(f in errors for f, _ in SUBJECT_FIELDS) and any(subject_values.values()):
        subject = Subject(**subject_values)
    key_type = None
    if values["key_type"]:
        try:
            key_type = KeyType.parse(values["key_type"])
        except UsageError as exc:
            errors["key_type"] = str(exc)
    try:
        policy = KeyPolicy(values["key_policy"] or "new")
    except ValueError:
        errors["key_policy"] = "choose new, reuse or imported"
        policy = KeyPolicy.NEW
    if policy is KeyPolicy.IMPORTED:
        key_type = None  # the key's own type
        if not values["key_pem"]:
            errors["key_pem"] = "an imported key policy needs the key: paste it in PEM"
    days = None
    if values["renew_before_days"]:
        try:
            days = float(values["renew_before_days"])
        except ValueError:
            errors["renew_before_days"] = "a number of days, e.g. 30"
    keystore = None
    if values["keystore_type"]:
        try:
            keystore = ExportFormat.parse(values["keystore_type"])
        except UsageError as exc:
            errors["keystore_type"] = str(exc)
    if errors:
        return None, errors
    dns_account = values["dns_account"] or None
    req = CertificateRequest(
        names=names,
        account=values["account"] or None,
        fallback_accounts=values["fallback_accounts"],
        challenge=challenge,
        key_type=key_type,
        key_policy=policy,
        key_pem=values["key_pem"].encode() if policy is KeyPolicy.IMPORTED else None,
        subject=subject,
        renew_before_days=days,
        profile=values["profile"] or None,
        dns_account=dns_account if challenge is ChallengeType.DNS_01 else None,
        label=values["label"] or None,
        description=values["description"] or None,
        keystore_type=keystore,
        keystore_password=values["keystore_password"] or None,
    )
    return req, {}


@router.post("/certificates/new")
def request_certificate(request: Request, form: Form) -> Response:
    person = acting(request, form, Action.REQUEST)
    values = _form_values(form)
    req, errors = _build_request(values)
    if req is None:
        return _request_page(request, person, values, errors, 422)
    try:
        cert, _order = person.broker.requests.request(req)
    except UsageError as exc:
        return _request_page(
            request, person, values, field_errors(str(exc), REQUEST_FIELDS, "names"), 422
        )
    except CAError as exc:
        return _request_page(request, person, values, {"": f"The CA: {exc}"}, 502)
    return redirect(
        request,
        f"/certificates/{cert.id}",
        f"Certificate {cert.id} requested; the broker obtains it now.",
    )


# -- the detail page ----------------------------------------------------------------------------


@router.get("/certificates/{cert_id}")
def certificate_page(request: Request, cert_id: CertId) -> Response:
    person = who(request)
    person.require(Action.READ)
    broker = person.broker
    details = broker.certificates.details(cert_id)
    progress = broker.browsing.progress(cert_id)
    issued = details["serial"] is not None
    formats = {
        name: about
        for name, about in FORMATS.items()
        if person.may(Action.READ_KEY)
        or not (issued and broker.certificates.export_holds_key(cert_id, ExportFormat(name)))
    }
    return render(
        request,
        person,
        "certificate.html",
        cert=details,
        progress=progress,
        issued=issued,
        formats=formats,
        reasons=REVOCATION_REASONS,
        subject_fields=dict(SUBJECT_FIELDS),
        targets=broker.deploy.of_certificate(cert_id),
    )


@router.post("/certificates/{cert_id}/deploy")
def deploy_now(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.REQUEST)
    queued = person.broker.deploy.deploy_now(cert_id, text(form, "target") or None)
    names = ", ".join(d.target_name for d in queued) or "nothing (it is being deployed)"
    return redirect(
        request, f"/certificates/{cert_id}", f"Deployment queued for {names}; watch it below."
    )


@router.post("/certificates/{cert_id}/renew")
def renew(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.REQUEST)
    order = person.broker.renewal.renew(cert_id)
    return redirect(
        request, f"/certificates/{cert_id}", f"Renewal queued (order {order.id}); watch it below."
    )


@router.post("/certificates/{cert_id}/revoke")
def revoke(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.REVOKE)
    reason = text(form, "reason") or "unspecified"
    if reason not in REVOCATION_REASONS:
        raise UsageError(f"unknown revocation reason {reason!r}")
    person.broker.certificates.revoke(cert_id, RevocationReason(reason))
    return redirect(
        request,
        f"/certificates/{cert_id}",
        f"Certificate {cert_id} is revoked at the CA ({REVOCATION_REASONS[reason]}).",
    )


@router.post("/certificates/{cert_id}/delete")
def delete(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.DELETE)
    cert = person.broker.certificates.delete(cert_id)
    still_valid = cert.cert_pem is not None and cert.status is CertificateStatus.VALID
    note = " It stays valid at the CA until it expires." if still_valid else ""
    return redirect(request, "/certificates", f"Certificate {cert_id} is deleted here.{note}")


@router.post("/certificates/{cert_id}/disable")
def disable(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.REQUEST)
    person.broker.renewal.disable(cert_id)
    return redirect(
        request, f"/certificates/{cert_id}", "Disabled: no retries and no renewal until enabled."
    )


@router.post("/certificates/{cert_id}/enable")
def enable(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.REQUEST)
    person.broker.renewal.enable(cert_id)
    return redirect(request, f"/certificates/{cert_id}", "Enabled: renewed and retried again.")


@router.post("/certificates/{cert_id}/download")
def download(request: Request, cert_id: CertId, form: Form) -> Response:
    person = acting(request, form, Action.READ)
    password = str(form.get("password") or "") or None
    chosen = text(form, "format")
    file = person.broker.certificates.download(
        person.principal, cert_id, ExportFormat.parse(chosen) if chosen else None, password
    )
    headers = {
        "Content-Disposition": f'attachment; filename="{file.filename}"',
        "Cache-Control": "no-store",
    }
    return Response(file.data, media_type=file.media_type, headers=headers)


@router.post("/certificates/{cert_id}/verify")
def verify(request: Request, cert_id: CertId, form: Form) -> Response:
    """Manual DNS-01: check the records (or start over with new values). It goes on in
    the background; the page follows it live."""
    from certbroker.services.leases import make_owner

    person = acting(request, form, Action.REQUEST)
    new_challenge = text(form, "new_challenge") == "1"
    try:
        person.broker.issuance.verify_in_background(cert_id, make_owner("web"), new_challenge)
    except UsageError as exc:
        return redirect(request, f"/certificates/{cert_id}", str(exc), "error")
    what = "New challenge values are on their way" if new_challenge else "Checking the records"
    return redirect(request, f"/certificates/{cert_id}", f"{what}; see the progress below.")
