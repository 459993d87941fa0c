"""ACME accounts: register, import, update, roll the key over, deactivate, forget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from certbroker.crypto.export import write_private_file
from certbroker.crypto.jwk import private_key_to_jwk
from certbroker.crypto.keys import (
    PrivateKey,
    generate_private_key,
    key_type_of,
    load_private_key,
    private_key_to_pem,
)
from certbroker.domain.directories import resolve_directory
from certbroker.domain.errors import CAError, UsageError
from certbroker.domain.keys import KeyType
from certbroker.domain.models import Account, AccountStatus
from certbroker.services import audit
from certbroker.services.common import ServiceContext, validate_emails


@dataclass(frozen=True)
class Registration:
    directory: str  # a directory URL or a preset (letsencrypt, letsencrypt-staging)
    emails: list[str]
    agree_tos: bool
    key_type: KeyType = KeyType.EC_P256
    name: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    ca_bundle: str | None = None


class AccountService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    def _default_name(self, directory_url: str) -> str:
        base = urlsplit(directory_url).hostname or "account"
        name, n = base, 2
        while self.repo.account_name_taken(name):
            name, n = f"{base}-{n}", n + 1
        return name

    def _check_name(self, name: str) -> str:
        name = name.strip()
        if (
            not name
            or len(name) > 100
            or name.isdigit()
            or any(c.isspace() or c == "/" for c in name)
        ):
            # A '/' would make the account unreachable at /api/v1/accounts/{name}.
            raise UsageError(
                f"account name {name!r} must be 1-100 characters, not only digits, no spaces or '/'"
            )
        if self.repo.account_name_taken(name):
            raise UsageError(f"an account named {name!r} already exists; choose another --name")
        return name

    def register(self, reg: Registration) -> Account:
        """Validate everything, ask the CA, and only then store the account and its key."""
        directory_url = resolve_directory(reg.directory)
        emails = validate_emails(reg.emails)
        if (reg.eab_kid is None) != (reg.eab_hmac_key is None):
            raise UsageError("external account binding needs both --eab-kid and --eab-hmac-key")
        name = self._default_name(directory_url) if reg.name is None else self._check_name(reg.name)
        key = generate_private_key(reg.key_type)
        ca = self.ctx.ca_factory(directory_url, key, None, reg.ca_bundle)
        tos = ca.terms_of_service()
        if not reg.agree_tos:
            where = f" at {tos}" if tos else ""
            raise UsageError(
                f"read the CA's terms of service{where} and accept them with --agree-tos"
            )
        if ca.external_account_required() and reg.eab_kid is None:
            raise UsageError(
                "this CA requires external account binding: pass --eab-kid and --eab-hmac-key "
                "from your account page at the CA"
            )
        eab = (reg.eab_kid, reg.eab_hmac_key) if reg.eab_kid and reg.eab_hmac_key else None
        info = ca.register(emails, True, eab)
        account = self.repo.add_account(
            name=name,
            directory_url=directory_url,
            ca_bundle=reg.ca_bundle,
            emails=emails,
            key_type=reg.key_type.value,
            key_sealed=self.ctx.sealer.seal(private_key_to_pem(key)),
            uri=info.uri,
            status=AccountStatus.from_ca(info.status),
            terms_of_service=tos,
            eab_kid=reg.eab_kid,
            now=self.ctx.clock(),
        )
        audit.record(
            self.ctx,
            "account.register",
            "account",
            account.name,
            {
                "directory": directory_url,
                "emails": emails,
                "key_type": reg.key_type.value,
                "eab_kid": reg.eab_kid,
                "eab_hmac_key": reg.eab_hmac_key,
                "ca_bundle": bool(reg.ca_bundle),
                "uri": account.uri,
            },
            secrets=[reg.eab_hmac_key or ""],
        )
        return account

    def import_key(
        self, key_data: bytes, directory: str, name: str | None, ca_bundle: str | None
    ) -> Account:
        """Adopt an account that exists at the CA, found by its key (onlyReturnExisting).
        `directory`: a directory URL or a preset."""
        directory_url = resolve_directory(directory)
        key = load_private_key(key_data, "account key file")
        key_type = key_type_of(key)
        name = self._default_name(directory_url) if name is None else self._check_name(name)
        ca = self.ctx.ca_factory(directory_url, key, None, ca_bundle)
        try:
            info = ca.find_account()
        except CAError as exc:
            if exc.problem is not None and exc.problem.code == "accountDoesNotExist":
                raise UsageError(
                    f"the CA at {directory_url} has no account for this key; "
                    "register a new one with `certbroker account register`"
                ) from None
            raise
        emails = [c.removeprefix("mailto:") for c in info.contacts]
        account = self.repo.add_account(
            name=name,
            directory_url=directory_url,
            ca_bundle=ca_bundle,
            emails=emails,
            key_type=key_type.value,
            key_sealed=self.ctx.sealer.seal(private_key_to_pem(key)),
            uri=info.uri,
            status=AccountStatus.from_ca(info.status),
            terms_of_service=ca.terms_of_service(),
            eab_kid=None,
            now=self.ctx.clock(),
        )
        audit.record(
            self.ctx,
            "account.import",
            "account",
            account.name,
            {"directory": directory_url, "key_type": key_type.value, "uri": account.uri},
        )
        return account

    def all(self) -> list[Account]:
        return self.repo.list_accounts()

    def get(self, ref: str) -> Account:
        return self.repo.get_account(ref)

    def refresh(self, ref: str) -> Account:
        """Ask the CA for the account's status and contacts and store what it says."""
        account = self.repo.get_account(ref)
        info = self.ctx.ca_for(account).query_account()
        status = AccountStatus.from_ca(info.status)
        emails = [c.removeprefix("mailto:") for c in info.contacts]
        updated = self.repo.set_account_from_ca(account.id, status, emails, self.ctx.clock())
        _record_change(self.ctx, "account.refresh", account, updated)
        return updated

    def _usable(self, ref: str) -> Account:
        account = self.repo.get_account(ref)
        if account.status is not AccountStatus.VALID:
            raise UsageError(
                f"account {account.name!r} is deactivated at the CA and cannot be used; "
                "register a new account"
            )
        return account

    def update_emails(self, ref: str, emails: list[str]) -> Account:
        account = self._usable(ref)
        cleaned = validate_emails(emails)
        self.ctx.ca_for(account).update_contacts(cleaned)
        updated = self.repo.set_account_emails(account.id, cleaned, self.ctx.clock())
        _record_change(self.ctx, "account.update", account, updated)
        return updated

    def rollover(self, ref: str, key_type: KeyType | None = None) -> Account:
        """RFC 8555 key change. The new key is stored before the CA hears of it."""
        account = self._usable(ref)
        sealer = self.ctx.sealer
        old_key = load_private_key(sealer.unseal(self.repo.account_key_sealed(account.id)))
        pending = self.repo.account_next_key_sealed(account.id)
        if pending is not None and self._key_is_current_at_ca(account, pending):
            # An earlier rollover reached the CA but crashed before the swap: finish it.
            return self._swap_key(account, pending)
        new_key = generate_private_key(key_type or KeyType(account.key_type))
        new_sealed = sealer.seal(private_key_to_pem(new_key))
        self.repo.stage_account_key(account.id, new_sealed, self.ctx.clock())
        try:
            self.ctx.ca_for(account, old_key).change_key(private_key_to_pem(new_key))
        except Exception:
            self.repo.stage_account_key(account.id, None, self.ctx.clock())
            raise
        return self._swap_key(account, new_sealed)

    def _key_is_current_at_ca(self, account: Account, sealed: bytes) -> bool:
        key = load_private_key(self.ctx.sealer.unseal(sealed))
        try:
            info = self.ctx.ca_for(account, key).find_account()
        except CAError:
            return False
        return info.uri == account.uri

    def _swap_key(self, account: Account, sealed: bytes) -> Account:
        key = load_private_key(self.ctx.sealer.unseal(sealed))
        updated = self.repo.swap_account_key(
            account.id, sealed, key_type_of(key).value, self.ctx.clock()
        )
        _record_change(self.ctx, "account.rollover", account, updated, change="new key")
        return updated

    def recreate(self, ref: str) -> Account:
        """After the CA forgot the account (accountDoesNotExist): register its key again,
        with its contacts, and keep the account here under its new URL."""
        account = self._usable(ref)
        key = load_private_key(self.ctx.sealer.unseal(self.repo.account_key_sealed(account.id)))
        ca = self.ctx.ca_factory(account.directory_url, key, None, account.ca_bundle)
        info = ca.register(list(account.emails), True, None)
        updated = self.repo.set_account_registered(
            account.id, info.uri, AccountStatus.from_ca(info.status), self.ctx.clock()
        )
        _record_change(self.ctx, "account.recreate", account, updated)
        return updated

    def deactivate(self, ref: str) -> Account:
        account = self._usable(ref)
        self.ctx.ca_for(account).deactivate()
        updated = self.repo.set_account_status(
            account.id, AccountStatus.DEACTIVATED, self.ctx.clock()
        )
        _record_change(self.ctx, "account.deactivate", account, updated)
        return updated

    def delete(self, ref: str) -> Account:
        account = self.repo.get_account(ref)
        count = self.repo.count_certificates_of_account(account.id)
        if count:
            raise UsageError(
                f"account {account.name!r} still has {count} certificate(s) here; "
                "delete them first (`certbroker cert delete ID`)"
            )
        # A certificate keeps its fallback accounts by ID: one deleted from under it
        # breaks `cert show` and its CA fallback ("no account N"), even once another
        # account of the same name is registered.
        falling_back = self.repo.certificates_falling_back_to(account.id)
        if falling_back:
            shown = ", ".join(str(i) for i in falling_back[:10])
            more = f" and {len(falling_back) - 10} more" if len(falling_back) > 10 else ""
            raise UsageError(
                f"account {account.name!r} is the CA fallback of certificate(s) {shown}{more}; "
                "delete them first (`certbroker cert delete ID`)"
            )
        users = [c.name for c in self.repo.list_clients() if c.account_id == account.id]
        if users:
            raise UsageError(
                f"account {account.name!r} is the ACME account of client(s) "
                f"{', '.join(users)}; give them another first "
                "(`certbroker client set NAME --account OTHER` or --clear-account)"
            )
        self.repo.delete_account(account.id)
        audit.record(self.ctx, "account.delete", "account", account.name, _audited(account))
        return account

    def account_key(self, ref: str) -> PrivateKey:
        account = self.repo.get_account(ref)
        return load_private_key(self.ctx.sealer.unseal(self.repo.account_key_sealed(account.id)))

    def export_key(self, ref: str, out: Path, fmt: str = "pem") -> Path:
        key = self.account_key(ref)
        if fmt == "pem":
            data = private_key_to_pem(key)
        elif fmt == "jwk":
            data = private_key_to_jwk(key)
        else:
            raise UsageError(f"unknown key format {fmt!r}: choose pem or jwk")
        # Recorded before the key leaves: a record that cannot be written stops the export.
        audit.record(
            self.ctx,
            "account.export-key",
            "account",
            self.repo.get_account(ref).name,
            {"format": fmt, "file": str(out)},
        )
        write_private_file(out, data)
        return out


def _audited(account: Account) -> dict[str, object]:
    """What the audit log shows of an account (never its key)."""
    return {
        "directory": account.directory_url,
        "emails": list(account.emails),
        "status": account.status.value,
        "key_type": account.key_type,
        "uri": account.uri,
    }


def _record_change(
    ctx: ServiceContext, action: str, old: Account, new: Account, **more: object
) -> None:
    audit.record(
        ctx, action, "account", new.name, {**audit.diff(_audited(old), _audited(new)), **more}
    )
