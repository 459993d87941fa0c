"""ACME accounts, DNS accounts, users, API tokens and settings (admin to change, any
role to read — never a secret), plus events, alarms and the dashboard."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from certbroker.api.auth import Admin, BrokerDep, Reader, unlimited
from certbroker.api.problems import ERRORS
from certbroker.domain.access import Action, Principal, Role
from certbroker.domain.errors import AccessDenied
from certbroker.domain.keys import KeyType

router = APIRouter(responses=ERRORS)

Name = Annotated[str, Path(min_length=1, max_length=200)]
Text200 = Annotated[str, Field(max_length=200)]
KeyTypeName = Literal["ec-p256", "ec-p384", "rsa2048", "rsa3072", "rsa4096"]
RoleName = Literal["viewer", "operator", "admin"]


# -- ACME accounts ----------------------------------------------------------------------


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    directory: Annotated[str, Field(min_length=1, max_length=2000)] = Field(
        description="A directory URL, or letsencrypt / letsencrypt-staging."
    )
    agree_tos: bool = Field(description="You read the CA's terms of service and accept them.")
    emails: Annotated[list[Text200], Field(max_length=20)] = []
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    key_type: KeyTypeName = "ec-p256"
    eab_kid: Annotated[str, Field(max_length=1000)] | None = None
    eab_hmac_key: Annotated[str, Field(max_length=1000)] | None = None
    ca_bundle: Annotated[str, Field(max_length=100000)] | None = Field(
        None, description="PEM root(s) of a private CA's TLS certificate."
    )


class ImportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    directory: Annotated[str, Field(min_length=1, max_length=2000)]
    key_pem: Annotated[str, Field(min_length=1, max_length=20000)]
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    ca_bundle: Annotated[str, Field(max_length=100000)] | None = None


class EmailsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emails: Annotated[list[Text200], Field(max_length=20)]


class RolloverBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_type: KeyTypeName | None = None


@router.get("/accounts", tags=["ACME accounts"], response_model=list[dict[str, Any]])
def list_accounts(_p: Reader, broker: BrokerDep) -> list[dict[str, Any]]:
    """ACME accounts (never their keys)."""
    return [a.to_json() for a in broker.accounts.all()]


@router.post("/accounts", tags=["ACME accounts"], status_code=201, response_model=dict[str, Any])
def register_account(body: RegisterBody, _p: Admin, broker: BrokerDep) -> JSONResponse:
    """Register an account at a CA (production, staging or any directory; EAB)."""
    from certbroker.services.accounts import Registration
    from certbroker.services.common import read_ca_bundle

    bundle = read_ca_bundle(body.ca_bundle.encode(), "ca_bundle") if body.ca_bundle else None
    account = broker.accounts.register(
        Registration(
            directory=body.directory,
            emails=body.emails,
            agree_tos=body.agree_tos,
            key_type=KeyType(body.key_type),
            name=body.name,
            eab_kid=body.eab_kid,
            eab_hmac_key=body.eab_hmac_key,
            ca_bundle=bundle,
        )
    )
    return JSONResponse(
        account.to_json(), status_code=201, headers={"Location": f"/api/v1/accounts/{account.id}"}
    )


@router.post(
    "/accounts/import", tags=["ACME accounts"], status_code=201, response_model=dict[str, Any]
)
def import_account(body: ImportBody, _p: Admin, broker: BrokerDep) -> JSONResponse:
    """Adopt an account that exists at the CA, found by its key."""
    from certbroker.services.common import read_ca_bundle

    bundle = read_ca_bundle(body.ca_bundle.encode(), "ca_bundle") if body.ca_bundle else None
    account = broker.accounts.import_key(body.key_pem.encode(), body.directory, body.name, bundle)
    return JSONResponse(account.to_json(), status_code=201)


@router.get("/accounts/{name}", tags=["ACME accounts"], response_model=dict[str, Any])
def show_account(name: Name, _p: Reader, broker: BrokerDep) -> dict[str, Any]:
    return broker.accounts.get(name).to_json()


@router.put("/accounts/{name}/emails", tags=["ACME accounts"], response_model=dict[str, Any])
def update_account_emails(
    name: Name, body: EmailsBody, _p: Admin, broker: BrokerDep
) -> dict[str, Any]:
    """Change the account's contact e-mails at the CA."""
    return broker.accounts.update_emails(name, body.emails).to_json()


@router.post("/accounts/{name}/rollover", tags=["ACME accounts"], response_model=dict[str, Any])
def rollover_account_key(
    name: Name, body: RolloverBody, _p: Admin, broker: BrokerDep
) -> dict[str, Any]:
    """Replace the account's key (RFC 8555 key rollover)."""
    key_type = KeyType(body.key_type) if body.key_type else None
    return broker.accounts.rollover(name, key_type).to_json()


@router.post("/accounts/{name}/refresh", tags=["ACME accounts"], response_model=dict[str, Any])
def refresh_account(name: Name, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Ask the CA for the account's status and contacts."""
    return broker.accounts.refresh(name).to_json()


@router.post("/accounts/{name}/deactivate", tags=["ACME accounts"], response_model=dict[str, Any])
def deactivate_account(name: Name, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Deactivate at the CA, for good: it can never order again (its certificates stay
    valid). To stop using it here only, delete it instead."""
    return broker.accounts.deactivate(name).to_json()


@router.delete("/accounts/{name}", tags=["ACME accounts"], response_model=dict[str, Any])
def delete_account(name: Name, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Forget the account here (the CA keeps it; no certificate may still use it)."""
    return broker.accounts.delete(name).to_json()


# -- DNS accounts -----------------------------------------------------------------------


class DnsAccountBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    provider: Annotated[str, Field(min_length=1, max_length=100)]
    options: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=10000)]]
    zones: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=100)] = []


class DnsTestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zone: Annotated[str, Field(max_length=253)] | None = None


@router.get("/dns-providers", tags=["DNS accounts"], response_model=list[dict[str, Any]])
def list_dns_providers(_p: Reader) -> list[dict[str, Any]]:
    """rfc2136 and every dns-lexicon provider, and whether it can be used here."""
    from certbroker.services.dns import dns_providers

    found = [{"name": "rfc2136", "installed": True}]
    found += [{"name": n, "installed": ok} for n, ok in sorted(dns_providers().items())]
    return found


@router.get("/dns-providers/{provider}", tags=["DNS accounts"], response_model=list[dict[str, Any]])
def dns_provider_fields(provider: Name, _p: Reader) -> list[dict[str, Any]]:
    """A provider's options: name, help, whether secret, default, choices."""
    from certbroker.services.dns import dns_provider_options

    if provider == "rfc2136":
        return [
            {"name": "server", "help": "IP[:port] of the primary", "secret": False},
            {"name": "tsig_key_name", "help": "TSIG key name", "secret": False},
            {"name": "tsig_secret", "help": "TSIG secret (base64)", "secret": True},
            {"name": "tsig_algorithm", "help": "default hmac-sha256", "secret": False},
        ]
    return [asdict(o) for o in dns_provider_options(provider)]


@router.get("/dns-accounts", tags=["DNS accounts"], response_model=list[dict[str, Any]])
def list_dns_accounts(_p: Reader, broker: BrokerDep) -> list[dict[str, Any]]:
    """DNS accounts, their secrets masked."""
    return [a.to_json() for a in broker.dns.accounts()]


@router.post("/dns-accounts", tags=["DNS accounts"], status_code=201, response_model=dict[str, Any])
def add_dns_account(body: DnsAccountBody, _p: Admin, broker: BrokerDep) -> JSONResponse:
    """Add a DNS account; its secrets are sealed at rest and never shown again."""
    account = broker.dns.add(body.name, body.provider, body.options, body.zones, environ={})
    return JSONResponse(account.to_json(), status_code=201)


@router.get("/dns-accounts/{name}", tags=["DNS accounts"], response_model=dict[str, Any])
def show_dns_account(name: Name, _p: Reader, broker: BrokerDep) -> dict[str, Any]:
    return broker.dns.get(name).to_json()


@router.post("/dns-accounts/{name}/test", tags=["DNS accounts"], response_model=dict[str, Any])
def test_dns_account(name: Name, body: DnsTestBody, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Write a test TXT record, wait until it is visible, remove it."""
    report = broker.dns.test(name, body.zone)
    return {
        "account": report.account,
        "name": report.name,
        "written_in": report.written_in,
        "visible_in": report.visible_in,
        "servers": [f"{ip}:{port}" for ip, port in report.servers],
        "removed_in": report.removed_in,
    }


@router.delete("/dns-accounts/{name}", tags=["DNS accounts"], response_model=dict[str, Any])
def delete_dns_account(name: Name, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    return broker.dns.delete(name).to_json()


# -- users and tokens -------------------------------------------------------------------


class UserBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    role: RoleName = "viewer"
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: RoleName | None = None
    enabled: bool | None = None
    password: Annotated[str, Field(min_length=1, max_length=1024)] | None = None


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]
    role: RoleName = "viewer"
    names: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=100)] = []
    expires_days: Annotated[float, Field(gt=0, le=3650)] | None = None


@router.get("/users", tags=["users and tokens"], response_model=list[dict[str, Any]])
def list_users(_p: Admin, broker: BrokerDep) -> list[dict[str, Any]]:
    return [u.to_json() for u in broker.access.users()]


@router.post("/users", tags=["users and tokens"], status_code=201, response_model=dict[str, Any])
def add_user(body: UserBody, _p: Admin, broker: BrokerDep) -> JSONResponse:
    user = broker.access.add_user(body.name, Role(body.role), body.password)
    return JSONResponse(user.to_json(), status_code=201)


@router.patch("/users/{name}", tags=["users and tokens"], response_model=dict[str, Any])
def change_user(name: Name, body: UserChange, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Role, enabled, password; the last enabled admin stays an enabled admin."""
    access = broker.access
    user = access.user(name)
    if body.password is not None:
        access.set_password(user.id, body.password)
    if body.role is not None:
        access.set_role(user.id, Role(body.role))
    if body.enabled is not None:
        access.set_enabled(user.id, body.enabled)
    return access.user(user.id).to_json()


@router.delete("/users/{name}", tags=["users and tokens"], response_model=dict[str, Any])
def delete_user(name: Name, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    return broker.access.delete_user(name).to_json()


@router.get("/tokens", tags=["users and tokens"], response_model=list[dict[str, Any]])
def list_tokens(_p: Admin, broker: BrokerDep) -> list[dict[str, Any]]:
    """API tokens: role, name limit, expiry, last use; never the tokens."""
    return [t.to_json() for t in broker.access.tokens()]


@router.post("/tokens", tags=["users and tokens"], status_code=201, response_model=dict[str, Any])
def create_token(body: TokenBody, principal: Admin, broker: BrokerDep) -> JSONResponse:
    """A new token; `token` in the answer is shown this once and stored only hashed."""
    token, secret = broker.access.create_token(
        body.name,
        Role(body.role),
        body.names,
        body.expires_days,
        created_by=principal.name,
        by=principal,
    )
    return JSONResponse({**token.to_json(), "token": secret}, status_code=201)


@router.delete("/tokens/{token_id}", tags=["users and tokens"], response_model=dict[str, Any])
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], principal: Admin, broker: BrokerDep
) -> dict[str, Any]:
    """Revoke a token: it stops working at once, on every node."""
    if principal.token_id == token_id:
        raise AccessDenied("a token cannot revoke itself; use another token or the console")
    return broker.access.revoke_token(token_id).to_json()


# -- events, alarms, dashboard ----------------------------------------------------------


@router.get("/events", tags=["events"], response_model=list[dict[str, Any]])
def list_events(
    principal: Reader,
    broker: BrokerDep,
    certificate_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """What happened, oldest first: the newest `limit` events."""
    events = broker.certificates.events(certificate_id, since, limit=limit)
    if principal.names:
        seen = broker.browsing.visible_ids(principal.names, {e.certificate_id for e in events})
        events = [e for e in events if e.certificate_id in seen]
    return [e.to_json() for e in events]


@router.get("/alarms", tags=["events"], response_model=list[dict[str, Any]])
def list_alarms(principal: Reader, broker: BrokerDep) -> list[dict[str, Any]]:
    """Every alarm raised now, oldest first, each with its `kind`: `certificate` (its
    issuance or renewal keeps failing), `deployment` (a push target, `target`, keeps
    failing), `install-failed` or `drift` (a gateway agent, `client`, could not install
    it or still serves a replaced serial)."""
    return [a for a in broker.browsing.alarms() if principal.may_see(a["names"])]


DashboardReader = Annotated[
    Principal, Depends(unlimited(Action.READ, "the dashboard counts every certificate"))
]


@router.get("/dashboard", tags=["events"], response_model=dict[str, Any])
def dashboard(_p: DashboardReader, broker: BrokerDep) -> dict[str, Any]:
    """Counts by status, expiring within 7 and 30 days, alarms, expiry timeline, latest
    events. Not for name-limited tokens (it counts every certificate)."""
    return broker.browsing.dashboard()


# -- settings ---------------------------------------------------------------------------


class SettingsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    renew_before_days: Annotated[float, Field(gt=0, lt=10000)] | None = Field(
        None, description="Renew this many days before expiry; null: the configured policy."
    )
    notify_to: Annotated[list[Text200], Field(max_length=100)] = Field(
        [], description="Who gets expiry e-mails when a certificate names nobody."
    )
    console_certificate_id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(
        None, description="A certificate of this broker for the console's HTTPS."
    )


@router.get("/settings", tags=["settings"], response_model=dict[str, Any])
def show_settings(_p: Reader, broker: BrokerDep) -> dict[str, Any]:
    return broker.runtime.broker_settings()


@router.put("/settings", tags=["settings"], response_model=dict[str, Any])
def change_settings(body: SettingsBody, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Replace the settings (every field; null clears one)."""
    return broker.runtime.update_broker_settings(
        renew_before_days=body.renew_before_days,
        notify_to=body.notify_to,
        console_certificate_id=body.console_certificate_id,
    )
