"""DNS accounts for DNS-01: add, list, show, test, delete, their default zones, and the
providers there are. Writing an order's TXT records is the DNS-01 solver's
(services/dns01.py)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certbroker.domain.audit import SECRET
from certbroker.domain.dns import (
    MANUAL,
    RFC2136,
    DnsAccount,
    DnsAccountConfig,
    Server,
    challenge_record_name,
    check_account_name,
)
from certbroker.domain.errors import UsageError
from certbroker.domain.names import normalize_name
from certbroker.ports import DnsLookups, DnsProvider, Progress
from certbroker.services import audit
from certbroker.services.common import ServiceContext, no_progress

if TYPE_CHECKING:
    from certbroker.dns.lexicon_catalog import ProviderOption

DnsFactory = Callable[[DnsAccountConfig], DnsProvider]


@dataclass(frozen=True)
class DnsSettings:
    """How records are checked: `check_servers` None means "find them" (the account's own
    server for RFC 2136, else the zone's authoritative servers); () means no check."""

    check_servers: tuple[Server, ...] | None = None
    propagation_timeout: float = 120.0


@dataclass(frozen=True)
class DnsTestReport:
    account: str
    name: str
    written_in: float
    visible_in: float | None  # None: the check is off
    servers: tuple[Server, ...]
    removed_in: float


class DnsService:
    def __init__(
        self,
        ctx: ServiceContext,
        factory: DnsFactory,
        lookups: Callable[[], DnsLookups],
        settings: DnsSettings,
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.factory = factory
        self._make_lookups = lookups
        self._lookups: DnsLookups | None = None
        self.settings = settings

    @property
    def lookups(self) -> DnsLookups:
        """Made on first use: dnspython takes a tenth of a second to import, which every
        CLI command that never looks anything up in DNS would otherwise pay."""
        if self._lookups is None:
            self._lookups = self._make_lookups()
        return self._lookups

    # -- DNS accounts ----------------------------------------------------------------------

    def add(
        self,
        name: str,
        provider: str,
        options: Mapping[str, str],
        zones: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> DnsAccount:
        """Check everything, then store the account with its secrets sealed."""
        check_account_name(name)
        provider = provider.strip().lower()
        zone_names = [_zone(z) for z in zones]
        if len(set(zone_names)) != len(zone_names):
            raise UsageError("a zone is named twice in --zone; name each once")
        if provider == RFC2136:
            settings, secret = _rfc2136_options(options)
        else:
            settings, secret = _lexicon_options(provider, options, environ or os.environ)
        account = self.repo.add_dns_account(
            name=name,
            provider=provider,
            settings=settings,
            secret_names=sorted(secret),
            secrets_sealed=self.ctx.sealer.seal(json.dumps(secret).encode()),
            zones=zone_names,
            now=self.ctx.clock(),
        )
        audit.record(
            self.ctx,
            "dns-account.add",
            "dns-account",
            account.name,
            {
                "provider": provider,
                "options": dict(settings),
                "hidden_options": {k: SECRET for k in sorted(secret)},
                "zones": zone_names,
            },
            secrets=[str(v) for v in secret.values()],
        )
        return account

    def accounts(self) -> list[DnsAccount]:
        return self.repo.list_dns_accounts()

    def get(self, ref: str) -> DnsAccount:
        if ref.lower() == MANUAL:
            raise UsageError(
                f"{MANUAL!r} is manual DNS validation, not a stored account; a person writes "
                "the records it shows"
            )
        return self.repo.get_dns_account(ref)

    def set_zones(self, ref: str, add: Sequence[str], remove: Sequence[str]) -> DnsAccount:
        account = self.get(ref)
        added = [_zone(z) for z in add]
        removed = [_zone(z) for z in remove]
        unknown = [z for z in removed if z not in account.zones]
        if unknown:
            raise UsageError(
                f"DNS account {account.name!r} is not the default of {', '.join(unknown)} "
                f"(its zones: {', '.join(account.zones) or 'none'})"
            )
        self.repo.set_dns_zones(account.id, added, removed)
        updated = self.repo.get_dns_account(account.id)
        audit.record(
            self.ctx,
            "dns-account.zones",
            "dns-account",
            account.name,
            {"zones": [list(account.zones), list(updated.zones)]},
        )
        return updated

    def delete(self, ref: str) -> DnsAccount:
        account = self.get(ref)
        certs, records = self.repo.dns_account_users(account.id)
        if certs:
            raise UsageError(
                f"DNS account {account.name!r} is chosen by {certs} certificate(s) "
                "(--dns-account); delete or re-request them first"
            )
        if records:
            raise UsageError(
                f"DNS account {account.name!r} still has {records} TXT record(s) to remove; "
                "wait for their orders to end (`certbroker serve` removes them), then delete"
            )
        self.repo.delete_dns_account(account.id)
        audit.record(
            self.ctx,
            "dns-account.delete",
            "dns-account",
            account.name,
            {"provider": account.provider, "zones": list(account.zones)},
        )
        return account

    def config(self, account_id: int) -> DnsAccountConfig:
        account = self.repo.get_dns_account(account_id)
        sealed = self.repo.dns_account_secrets_sealed(account_id)
        secret = json.loads(self.ctx.sealer.unseal(sealed))
        return DnsAccountConfig(
            name=account.name,
            provider=account.provider,
            settings=dict(account.settings),
            secrets=secret,
            zones=account.zones,
        )

    def provider(self, account_id: int) -> DnsProvider:
        return self.factory(self.config(account_id))

    def test(self, ref: str, zone: str | None, progress: Progress = no_progress) -> DnsTestReport:
        """Write a TXT record with a random value in `zone`, wait until it is visible,
        remove it: a bad credential or a wrong server shows now, not at the next renewal."""
        account = self.get(ref)
        if zone is None:
            if len(account.zones) != 1:
                raise UsageError(
                    f"name the zone to test DNS account {account.name!r} in: --zone ZONE"
                )
            zone = account.zones[0]
        zone = _zone(zone)
        provider = self.provider(account.id)
        name = challenge_record_name(zone)
        value = "certbroker-test-" + secrets.token_urlsafe(12)
        started = time.monotonic()
        provider.add_txt(name, value)
        written = time.monotonic() - started
        progress(f"wrote TXT {name} = {value!r} in {written:.2f} s")
        visible: float | None = None
        servers: tuple[Server, ...] = ()
        try:
            servers = self.check_servers(provider, name)
            if servers:
                visible = self.lookups.wait_visible(
                    [(s, name, value) for s in servers], self.settings.propagation_timeout
                )
                progress(
                    f"visible at {', '.join(f'{h}:{p}' for h, p in servers)} after {visible:.2f} s"
                )
        finally:
            started = time.monotonic()
            provider.remove_txt(name, value)
            removed = time.monotonic() - started
            progress(f"removed it in {removed:.2f} s")
        return DnsTestReport(account.name, name, written, visible, servers, removed)

    def check_servers(self, provider: DnsProvider | None, name: str) -> tuple[Server, ...]:
        """Where the propagation check asks for `name`; () when the check is off."""
        configured = self.settings.check_servers
        if configured is not None:
            return configured
        own = provider.check_servers() if provider is not None else ()
        return own or self.lookups.authoritative_servers(name)


def dns_providers() -> dict[str, bool]:
    """Every hosted DNS provider (dns-lexicon's) by name, and whether its Python
    packages are installed."""
    from certbroker.dns.lexicon_catalog import list_providers

    return list_providers()


def dns_provider_options(provider: str) -> list[ProviderOption]:
    """One provider's options: flag name, environment variable, secret or not, help."""
    from certbroker.dns.lexicon_catalog import provider_options

    return provider_options(provider)


def _zone(text: str) -> str:
    return normalize_name(text.strip().rstrip("."))


def _rfc2136_options(options: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    from certbroker.dns.rfc2136 import check_tsig, parse_server

    known = {"server", "tsig_key_name", "tsig_secret", "tsig_algorithm"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"provider rfc2136 has no option --{unknown[0].replace('_', '-')}; its options: "
            "--server, --tsig-key-name, --tsig-secret, --tsig-algorithm, --zone"
        )
    missing = [o for o in ("server", "tsig_key_name", "tsig_secret") if not options.get(o)]
    if missing:
        raise UsageError(
            "provider rfc2136 needs "
            + ", ".join(f"--{m.replace('_', '-')}" for m in missing)
            + " (the TSIG key as `tsig-keygen` prints it)"
        )
    algorithm = options.get("tsig_algorithm") or "hmac-sha256"
    parse_server(options["server"])
    check_tsig(options["tsig_key_name"], options["tsig_secret"], algorithm)
    settings = {
        "server": options["server"].strip(),
        "tsig_key_name": options["tsig_key_name"],
        "tsig_algorithm": algorithm,
    }
    return settings, {"tsig_secret": options["tsig_secret"]}


def _lexicon_options(
    provider: str, options: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    from certbroker.dns.lexicon_catalog import list_providers, provider_options
    from certbroker.dns.lexicon_provider import LexiconProvider

    available = list_providers()
    if provider not in available:
        raise UsageError(
            f"no DNS provider {provider!r}; choose rfc2136 or one of dns-lexicon's "
            "(`certbroker dns providers` lists them)"
        )
    if not available[provider]:
        raise UsageError(
            f"DNS provider {provider!r} needs Python packages that are not installed: "
            f"pip install 'dns-lexicon[{provider}]'"
        )
    described = {o.name: o for o in provider_options(provider)}
    unknown = sorted(set(options) - set(described))
    if unknown:
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in sorted(described))
        raise UsageError(
            f"provider {provider} has no option --{unknown[0].replace('_', '-')}; its options: "
            f"{flags} (see docs/dns-providers.md)"
        )
    chosen = dict(options)
    for name, option in described.items():
        if name not in chosen and environ.get(option.env):
            chosen[name] = environ[option.env]
    if not chosen:
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in sorted(described))
        raise UsageError(
            f"provider {provider} needs its credentials: give them as options ({flags}) or "
            f"in the environment ({', '.join(o.env for o in described.values())})"
        )
    LexiconProvider(provider, chosen)  # refuses a bad switch or choice value now
    settings = {k: v for k, v in chosen.items() if not described[k].secret}
    secret = {k: v for k, v in chosen.items() if described[k].secret}
    return settings, secret
