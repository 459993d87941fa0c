"""Clients: devices, gateways, load balancers and servers that obtain certificates for
themselves. Each has a name, a token (`cbc_…`, shown once, kept as SHA-256) and an
allow-list of the names it may obtain; names off the list are refused, or wait for an
admin where its policy says `approve`."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from certbroker.domain.clients import (
    Client,
    ClientPolicy,
    Renewal,
    check_client_name,
    parse_allow_list,
)
from certbroker.domain.errors import NotAuthenticated, UsageError
from certbroker.services import audit
from certbroker.services.common import ServiceContext, secret_digest

CLIENT_TOKEN_PREFIX = "cbc_"  # noqa: S105 - recognisable in a leak; API tokens are cbt_


def _new_token() -> tuple[str, str, str]:
    """(the token, its SHA-256, the prefix shown in lists)."""
    secret = CLIENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return secret, secret_digest(secret), secret[: len(CLIENT_TOKEN_PREFIX) + 6]


class ClientService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    def add(
        self,
        name: str,
        allow: Sequence[str],
        wildcard: bool = False,
        policy: ClientPolicy = ClientPolicy.DENY,
        account: str | None = None,
        renewal: Renewal = Renewal.DEVICE,
    ) -> tuple[Client, str]:
        """A new client and its token, which is shown once and kept only hashed.
        `account`: the ACME account its certificates are ordered with (None: the only
        one); `renewal`: who renews them unless a request says otherwise."""
        check_client_name(name)
        patterns = parse_allow_list(allow, wildcard)
        account_id = self.repo.get_account(account).id if account else None
        secret, digest, prefix = _new_token()
        client = self.repo.add_client(
            name=name,
            token_hash=digest,
            token_prefix=prefix,
            allow=patterns,
            wildcard=wildcard,
            policy=policy,
            now=self.ctx.clock(),
            account_id=account_id,
            renewal=renewal,
        )
        audit.record(self.ctx, "client.add", "client", client.name, _audited(client))
        return client, secret

    def all(self) -> list[Client]:
        return self.repo.list_clients()

    def get(self, ref: str | int) -> Client:
        return self.repo.get_client(ref)

    def allow(
        self,
        ref: str | int,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        wildcard: bool | None = None,
        policy: ClientPolicy | None = None,
    ) -> Client:
        """Change the allow-list (add and remove patterns), the wildcard flag, the policy."""
        client = self.repo.get_client(ref)
        removed = set(parse_allow_list(remove, False))
        missing = sorted(removed - set(client.allow))
        if missing:
            raise UsageError(
                f"client {client.name!r} does not allow {', '.join(missing)} "
                f"(it allows: {', '.join(client.allow) or 'nothing'})"
            )
        kept = [p for p in client.allow if p not in removed]
        wild = client.wildcard if wildcard is None else wildcard
        patterns = parse_allow_list([*kept, *add], wild)
        changes: dict[str, object] = {"allow": patterns, "wildcard": wild}
        if policy is not None:
            changes["policy"] = policy
        changed = self.repo.change_client(client.id, self.ctx.clock(), **changes)
        _record_change(self.ctx, "client.allow", client, changed)
        return changed

    def set(
        self,
        ref: str | int,
        *,
        account: str | None = None,
        clear_account: bool = False,
        renewal: Renewal | None = None,
        policy: ClientPolicy | None = None,
    ) -> Client:
        """Change the client's ACME account (or `clear_account`: the only one), who renews
        its certificates from now on (certificates it has keep theirs until renewed by
        a new CSR), or its policy."""
        client = self.repo.get_client(ref)
        if account and clear_account:
            raise UsageError("give --account NAME or --clear-account, not both")
        changes: dict[str, object] = {}
        if account:
            changes["account_id"] = self.repo.get_account(account).id
        if clear_account:
            changes["account_id"] = None
        if renewal is not None:
            changes["renewal"] = renewal
        if policy is not None:
            changes["policy"] = policy
        if not changes:
            raise UsageError(
                "say what to change: --account, --clear-account, --renewal or --policy"
            )
        changed = self.repo.change_client(client.id, self.ctx.clock(), **changes)
        _record_change(self.ctx, "client.set", client, changed)
        return changed

    def account_name(self, client: Client) -> str | None:
        """The name of its ACME account (None: the only one there is)."""
        if client.account_id is None:
            return None
        return self.repo.get_account(client.account_id).name

    def rotate_token(self, ref: str | int) -> tuple[Client, str]:
        """A new token; the old one stops working at once."""
        client = self.repo.get_client(ref)
        secret, digest, prefix = _new_token()
        changed = self.repo.change_client(
            client.id, self.ctx.clock(), token_hash=digest, token_prefix=prefix
        )
        _record_change(self.ctx, "client.rotate-token", client, changed)
        return changed, secret

    def set_enabled(self, ref: str | int, enabled: bool) -> Client:
        client = self.repo.get_client(ref)
        changed = self.repo.change_client(client.id, self.ctx.clock(), enabled=enabled)
        _record_change(self.ctx, "client.enable" if enabled else "client.disable", client, changed)
        return changed

    def delete(self, ref: str | int) -> Client:
        client = self.repo.get_client(ref)
        self.repo.delete_client(client.id)
        audit.record(self.ctx, "client.delete", "client", client.name, _audited(client))
        return client

    def authenticate(self, secret: str, address: str) -> Client:
        """The client a token belongs to; NotAuthenticated for an unknown token or a
        disabled client."""
        client = self.repo.client_by_token_hash(secret_digest(secret)) if secret else None
        if client is None:
            raise NotAuthenticated("unknown client token")
        if not client.enabled:
            raise NotAuthenticated(f"client {client.name!r} is disabled")
        self.repo.client_seen(client, self.ctx.clock(), address)
        return client


def _audited(client: Client) -> dict[str, object]:
    """What the audit log shows of a client: never its token, only the token's prefix."""
    return {
        "allow": list(client.allow),
        "wildcard": client.wildcard,
        "policy": client.policy.value,
        "enabled": client.enabled,
        "account_id": client.account_id,
        "renewal": client.renewal.value,
        "token_prefix": client.token_prefix,
    }


def _record_change(ctx: ServiceContext, action: str, old: Client, new: Client) -> None:
    audit.record(ctx, action, "client", new.name, audit.diff(_audited(old), _audited(new)))
