"""The one place that picks concrete adapters from the configuration."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certbroker.challenges.http01 import Responder, bind_responder, probe
from certbroker.config import Settings
from certbroker.crypto.keys import PrivateKey
from certbroker.crypto.sealing import Sealer, load_or_create_master_key
from certbroker.domain.dns import RFC2136, DnsAccountConfig, parse_servers
from certbroker.domain.errors import CertbrokerError
from certbroker.ports import CertificateAuthority, DnsLookups, DnsProvider
from certbroker.services.accounts import AccountService
from certbroker.services.certificates import CertificateService
from certbroker.services.common import ServiceContext, utcnow
from certbroker.services.dns import DnsService, DnsSettings
from certbroker.services.issuance import IssuanceService
from certbroker.services.renewal import RenewalService
from certbroker.store.db import make_engine, migrate
from certbroker.store.repository import Repository
from certbroker.store.token_lookup import token_lookup

log = logging.getLogger("certbroker")


class CAClients:
    """Hands out ACME clients, one per thread and account key, so nonces and TLS
    connections are reused across orders without sharing a client between threads."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = bundle_dir
        self._local = threading.local()

    def _bundle_path(self, pem: str) -> str:
        digest = hashlib.sha256(pem.encode()).hexdigest()[:32]
        path = self.bundle_dir / f"{digest}.pem"
        if not path.exists():
            self.bundle_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_text(pem)
            tmp.replace(path)
        return str(path)

    def __call__(
        self, directory_url: str, key: PrivateKey, account_uri: str | None, ca_bundle: str | None
    ) -> CertificateAuthority:
        # Imported here: the ACME library is a third of the CLI's start-up, and most
        # commands (list, show, export) never talk to a CA.
        from certbroker.ca.acme_client import AcmeCA

        bundle = self._bundle_path(ca_bundle) if ca_bundle else None
        if account_uri is None:
            return AcmeCA(directory_url, key, None, bundle)
        fingerprint = hashlib.sha256(
            key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ).hexdigest()
        cache: dict[tuple[str, str, str, str | None], AcmeCA] = (
            getattr(self._local, "clients", None) or {}
        )
        self._local.clients = cache
        cache_key = (directory_url, account_uri, fingerprint, bundle)
        client = cache.get(cache_key)
        if client is None:
            client = AcmeCA(directory_url, key, account_uri, bundle)
            cache[cache_key] = client
        return client


def make_dns_provider(config: DnsAccountConfig) -> DnsProvider:
    """The adapter for one DNS account: certbroker's RFC 2136, or a dns-lexicon provider."""
    if config.provider == RFC2136:
        from certbroker.dns.rfc2136 import Rfc2136Provider

        return Rfc2136Provider(
            config.name,
            config.settings["server"],
            config.settings["tsig_key_name"],
            config.secrets["tsig_secret"],
            config.settings.get("tsig_algorithm", "hmac-sha256"),
            zones=config.zones,
        )
    from certbroker.dns.lexicon_provider import LexiconProvider

    return LexiconProvider(
        config.provider, config.options(), zones=config.zones, account=config.name
    )


def dns_settings(settings: Settings) -> DnsSettings:
    check = settings.dns_check_servers
    return DnsSettings(
        check_servers=(() if check == "off" else parse_servers(check, "dns_check_servers") or None),
        propagation_timeout=settings.dns_propagation_timeout,
    )


@dataclass
class Broker:
    settings: Settings
    repo: Repository
    ctx: ServiceContext
    accounts: AccountService = field(init=False)
    issuance: IssuanceService = field(init=False)
    renewal: RenewalService = field(init=False)
    certificates: CertificateService = field(init=False)
    dns: DnsService = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = AccountService(self.ctx)
        self.dns = DnsService(
            self.ctx,
            make_dns_provider,
            self._dns_lookups,
            dns_settings(self.settings),
        )
        self.issuance = IssuanceService(
            self.ctx,
            order_timeout=self.settings.order_timeout,
            retry_attempts=self.settings.retry_attempts,
            renew_before_days=self.settings.renew_before_days or None,
            validation_cap=self.settings.validation_failures_per_hour,
            dns=self.dns,
        )
        self.renewal = RenewalService(self.ctx, self.issuance)
        self.certificates = CertificateService(self.ctx)

    def _dns_lookups(self) -> DnsLookups:
        from certbroker.dns.propagation import DnsLookups

        return DnsLookups(parse_servers(self.settings.dns_resolvers, "dns_resolvers"))

    def bind_responder(self) -> Responder:
        lookup, inline = token_lookup(self.repo.engine, self.repo.key_authorization)
        return bind_responder(
            self.settings.http01_address, self.settings.http01_port, lookup, inline=inline
        )

    def ensure_responder(self) -> Responder | None:
        """Run the HTTP-01 responder here unless something already serves this store's tokens.

        Returns the responder this process started (the caller stops it), or None when
        another process (`certbroker serve`) already answers.
        """
        port = self.settings.http01_port
        try:
            return self.bind_responder().start()
        except CertbrokerError as bind_error:
            now = utcnow()
            served = probe(
                port,
                lambda token, value: self.repo.put_challenges(
                    None, [(token, value, "probe", "probe")], now
                ),
                self.repo.delete_challenge,
            )
            if served:
                log.info("port %d already answers this store's challenges; using it", port)
                return None
            raise CertbrokerError(
                f"{bind_error}; and what listens there does not answer certbroker's "
                "challenges. Stop it, run `certbroker serve` there, or set "
                "CERTBROKER_HTTP01_PORT"
            ) from None


def build(settings: Settings) -> Broker:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    sealer = Sealer(load_or_create_master_key(settings.data_dir, settings.master_key))
    repo = Repository(engine)
    ctx = ServiceContext(
        repo=repo, sealer=sealer, ca_factory=CAClients(settings.data_dir / "ca-bundles")
    )
    return Broker(settings=settings, repo=repo, ctx=ctx)
