"""The one place that picks concrete adapters from the configuration.

A service is built, and its module imported, when an entry point first asks for it:
`cert list` needs the store and two services, not the ACME client, the solvers or the
issuance machinery (docs/benchmarks.md, start-up).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from certbroker.domain.dns import RFC2136, DnsAccountConfig, parse_servers
from certbroker.domain.errors import UsageError
from certbroker.domain.models import ChallengeType
from certbroker.ports import (
    CertificateAuthority,
    ChallengeSolver,
    DnsLookups,
    DnsProvider,
    RequestTimer,
)
from certbroker.services.common import ServiceContext, utcnow
from certbroker.services.master_key import open_sealer
from certbroker.store.db import make_engine, migrate
from certbroker.store.repository import Repository
from certbroker.store.space import watch_space

if TYPE_CHECKING:
    from certbroker.challenges.http01 import Responder
    from certbroker.config import Settings
    from certbroker.crypto.keys import PrivateKey
    from certbroker.services.access import AccessService
    from certbroker.services.accounts import AccountService
    from certbroker.services.agents import AgentService
    from certbroker.services.audit import AuditService
    from certbroker.services.browsing import Browsing
    from certbroker.services.budgets import BudgetService
    from certbroker.services.certificates import CertificateService
    from certbroker.services.clients import ClientService
    from certbroker.services.deploy import DeployService
    from certbroker.services.devices import DeviceService
    from certbroker.services.dns import DnsService, DnsSettings
    from certbroker.services.issuance import IssuanceService
    from certbroker.services.master_key import MasterKeyService
    from certbroker.services.metrics import MetricsService
    from certbroker.services.notify import MailDefaults, NotifyService
    from certbroker.services.planning import RenewalPlanner
    from certbroker.services.renewal import RenewalService
    from certbroker.services.requests import RequestService
    from certbroker.services.runtime import RuntimeSettings
    from certbroker.services.trust import TrustService
    from certbroker.services.webhooks import WebhookService


class CAClients:
    """Hands out ACME clients, one per thread and account key, so nonces and TLS
    connections are reused across orders without sharing a client between threads."""

    def __init__(self, bundle_dir: Path, timer: RequestTimer | None = None) -> None:
        self.bundle_dir = bundle_dir
        self.timer = timer  # told how long each request took (the metrics' histogram)
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
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        from certbroker.ca.acme_client import AcmeCA

        bundle = self._bundle_path(ca_bundle) if ca_bundle else None
        if account_uri is None:
            return AcmeCA(directory_url, key, None, bundle, self.timer)
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
            client = AcmeCA(directory_url, key, account_uri, bundle, self.timer)
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


def mail_defaults(settings: Settings) -> MailDefaults:
    from certbroker.domain.notify import MailConfig, parse_thresholds
    from certbroker.services.notify import MailDefaults

    host, port = settings.listen_address()
    return MailDefaults(
        config=MailConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            user=settings.smtp_user,
            password=settings.smtp_password,
            sender=settings.smtp_from,
        ),
        notify_to=tuple(a.strip() for a in settings.notify_to.split(",") if a.strip()),
        thresholds=parse_thresholds(settings.expiry_thresholds),
        public_url=settings.public_url.rstrip("/") or f"http://{host}:{port}",
        retry_first=timedelta(seconds=settings.mail_retry_first),
    )


def dns_settings(settings: Settings) -> DnsSettings:
    from certbroker.services.dns import DnsSettings

    check = settings.dns_check_servers
    return DnsSettings(
        check_servers=(() if check == "off" else parse_servers(check, "dns_check_servers") or None),
        propagation_timeout=settings.dns_propagation_timeout,
    )


@dataclass
class Broker:
    """The services every entry point calls (CLI, API and console; the agent next), wired
    to the adapters the settings choose. Entry points use these and nothing beneath.
    Each is made on first use."""

    settings: Settings
    repo: Repository
    ctx: ServiceContext
    # DNS look-ups for DNS-01 (made on first use); tests that are about the order's states
    # rather than DNS hand in their own.
    dns_lookups: Callable[[], DnsLookups] | None = None

    @cached_property
    def access(self) -> AccessService:
        from certbroker.services.access import AccessService

        return AccessService(self.ctx)

    @cached_property
    def accounts(self) -> AccountService:
        from certbroker.services.accounts import AccountService

        return AccountService(self.ctx)

    @cached_property
    def audit(self) -> AuditService:
        """The audit log: who did what, when, from where (append-only)."""
        from certbroker.services.audit import AuditService

        return AuditService(self.ctx)

    @property
    def budgets(self) -> BudgetService:
        """Rate-limit budgets per CA (the ones every order is counted against)."""
        return self.issuance.budgets

    @cached_property
    def master_key(self) -> MasterKeyService:
        """Rotating the master key of the store's secrets."""
        from certbroker.services.master_key import MasterKeyService

        return MasterKeyService(self.ctx, self.settings.data_dir, bool(self.settings.master_key))

    @cached_property
    def browsing(self) -> Browsing:
        from certbroker.services.browsing import Browsing

        return Browsing(self.ctx)

    @cached_property
    def certificates(self) -> CertificateService:
        from certbroker.services.certificates import CertificateService

        return CertificateService(self.ctx, self.solvers)

    @cached_property
    def clients(self) -> ClientService:
        from certbroker.services.clients import ClientService

        return ClientService(self.ctx)

    @cached_property
    def notify(self) -> NotifyService:
        """Mail: SMTP settings, test mails, expiry warnings, the outbox, alarm
        acknowledgements."""
        from certbroker.notify.smtp import SmtpMailer
        from certbroker.services.notify import NotifyService

        return NotifyService(self.ctx, SmtpMailer(self.settings.smtp_ca_file or None),
                             mail_defaults(self.settings))  # fmt: skip

    @cached_property
    def deploy(self) -> DeployService:
        """Push targets: local directories and SSH hosts certificates are installed on."""
        from certbroker.deploy.local import LocalDeployer
        from certbroker.deploy.ssh import SshDeployer
        from certbroker.deploy.verify import served_fingerprint
        from certbroker.domain.targets import LOCAL, SSH
        from certbroker.services.deploy import DeployService

        return DeployService(
            self.ctx,
            {LOCAL: LocalDeployer(), SSH: SshDeployer()},
            served_fingerprint,
            retry_first=timedelta(seconds=self.settings.deploy_retry_first),
        )

    @cached_property
    def dns(self) -> DnsService:
        from certbroker.services.dns import DnsService

        lookups = self.dns_lookups or self._dns_lookups
        return DnsService(self.ctx, make_dns_provider, lookups, dns_settings(self.settings))

    @cached_property
    def solvers(self) -> dict[ChallengeType, ChallengeSolver]:
        """One solver per challenge type: how the services prove control of a name."""
        from certbroker.challenges.http01 import answers
        from certbroker.services.agent_http01 import AgentHttp01Solver
        from certbroker.services.dns01 import Dns01Solver
        from certbroker.services.http01 import Http01Solver

        http01 = Http01Solver(self.ctx, self.start_responder, answers, self.settings.http01_port)
        return {
            ChallengeType.HTTP_01: http01,
            ChallengeType.DNS_01: Dns01Solver(self.dns),
            ChallengeType.AGENT_HTTP_01: AgentHttp01Solver(self.ctx),
        }

    @cached_property
    def planner(self) -> RenewalPlanner:
        from certbroker.services.planning import RenewalPlanner

        return RenewalPlanner(
            self.settings.renew_before_days or None, stored=self.runtime.stored_renew_before_days
        )

    @cached_property
    def requests(self) -> RequestService:
        from certbroker.services.requests import RequestService

        return RequestService(self.ctx, self.solvers)

    @cached_property
    def agents(self) -> AgentService:
        """Gateway agents: the tokens they answer, what they install, what they report."""
        from certbroker.services.agents import AgentService

        return AgentService(self.ctx, self.requests, self.devices)

    @cached_property
    def metrics(self) -> MetricsService:
        from certbroker.services.metrics import MetricsService

        return MetricsService(self.ctx)

    @cached_property
    def devices(self) -> DeviceService:
        from certbroker.services.devices import ClientLimits, DeviceService

        settings = self.settings
        limits = ClientLimits(
            zone_certificates=settings.client_zone_certificates,
            pending=settings.client_pending_requests,
            approvals=settings.client_approval_requests,
        )
        return DeviceService(self.ctx, self.requests, limits)

    @cached_property
    def issuance(self) -> IssuanceService:
        from certbroker.services.issuance import IssuanceService

        return IssuanceService(
            self.ctx,
            self.solvers,
            self.planner,
            order_timeout=self.settings.order_timeout,
            retry_attempts=self.settings.retry_attempts,
            validation_cap=self.settings.validation_failures_per_hour,
        )

    @cached_property
    def renewal(self) -> RenewalService:
        from certbroker.services.renewal import RenewalService

        return RenewalService(self.ctx, self.issuance, self.planner)

    @cached_property
    def webhooks(self) -> WebhookService:
        """Signed webhooks: endpoints, the outbox of events, deliveries and their retries."""
        from certbroker.notify.webhook import HttpWebhookSender
        from certbroker.services.webhooks import WebhookService

        return WebhookService(
            self.ctx,
            HttpWebhookSender(),
            retry_first=timedelta(seconds=self.settings.webhook_retry_first),
        )

    @cached_property
    def trust(self) -> TrustService:
        from certbroker.services.trust import TrustService

        return TrustService(self.ctx)

    @cached_property
    def runtime(self) -> RuntimeSettings:
        from certbroker.services.runtime import RuntimeSettings

        return RuntimeSettings(self.ctx)

    def _dns_lookups(self) -> DnsLookups:
        from certbroker.dns.propagation import DnsLookups

        return DnsLookups(parse_servers(self.settings.dns_resolvers, "dns_resolvers"))

    def bind_responder(self) -> Responder:
        """The HTTP-01 responder on the configured port, answering this store's tokens
        (and forwarding the rest to `http01_upstream`, if set); listening already (a taken
        port raises CertbrokerError), answering once started."""
        from certbroker.challenges.http01 import bind_responder
        from certbroker.challenges.upstream import Upstream
        from certbroker.store.token_lookup import token_lookup

        lookup, inline = token_lookup(self.repo.engine, self.repo.key_authorization)
        url = self.settings.http01_upstream
        return bind_responder(
            self.settings.http01_address,
            self.settings.http01_port,
            lookup,
            inline=inline,
            upstream=Upstream.from_url(url) if url else None,
        )

    def start_responder(self) -> Responder:
        return self.bind_responder().start()


def store_schema(settings: Settings, *, upgrade: bool) -> tuple[str | None, str, str]:
    """`certbroker db status|upgrade`: (the store's schema revision, this certbroker's,
    where the store is); with `upgrade`, brought up to date first (the first revision
    is then what was found)."""
    from certbroker.store.db import HEAD_REVISION, current_revision

    engine = make_engine(settings.effective_database_url)
    try:
        where = engine.url.render_as_string(hide_password=True)
        if upgrade:
            found, _now = migrate(engine, upgrade=True)
            return found, HEAD_REVISION, where
        return current_revision(engine), HEAD_REVISION, where
    finally:
        engine.dispose()


def store_url(given: str) -> str:
    """A database URL as `db copy` takes it: a URL, or the path of a SQLite file."""
    if "://" in given:
        return given
    return f"sqlite:///{Path(given).expanduser().resolve()}"


def copy_store(
    source_url: str, target_url: str, progress: Callable[[str], None] = lambda _: None
) -> tuple[dict[str, int], str, str]:
    """`certbroker db copy`: every row of one store into another, empty one (made or
    brought to this schema first). Returns the rows per table and both places."""
    from certbroker.store.copy import copy_store as copy_rows
    from certbroker.store.copy import where

    source, target = make_engine(store_url(source_url)), make_engine(store_url(target_url))
    try:
        if where(source) == where(target):
            raise UsageError("--from and --to name the same store")
        return copy_rows(source, target, progress), where(source), where(target)
    finally:
        source.dispose()
        target.dispose()


def backup_store(settings: Settings, out: Path) -> dict[str, int]:
    """`certbroker backup`: the configured store, as one consistent snapshot, into a new
    SQLite file (mode 0600; secrets stay sealed under the same master key)."""
    out = out.expanduser().resolve()
    if out.exists() or Path(f"{out}-wal").exists():
        raise UsageError(f"{out} exists already; backup writes a new file, choose another --out")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a directory; create it first")
    umask = os.umask(0o077)  # the file and SQLite's companions: the owner's alone
    try:
        counts, _, _ = copy_store(settings.effective_database_url, str(out))
    except BaseException:
        for leftover in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
            leftover.unlink(missing_ok=True)
        raise
    finally:
        os.umask(umask)
        Path(f"{out}-writelock").unlink(missing_ok=True)
    return counts


def restore_store(settings: Settings, backup: Path) -> dict[str, int]:
    """`certbroker restore`: a backup file into the configured store, which must be empty."""
    backup = backup.expanduser().resolve()
    if not backup.is_file():
        raise UsageError(f"{backup} is not a file; give the file `certbroker backup` wrote")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    counts, _, _ = copy_store(str(backup), settings.effective_database_url)
    return counts


def build(settings: Settings) -> Broker:
    """The broker on the configured store, reaching CAs through the ACME client."""
    from certbroker.services.leases import configure

    configure(settings.node_name, settings.lease_seconds)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.effective_database_url)
    watch_space(engine)  # from the first statement on, a full disk is StoreFull
    migrate(engine)
    repo = Repository(engine)
    sealer = open_sealer(
        settings.data_dir, settings.master_key, repo, utcnow, settings.master_key_next
    )
    from certbroker.services.metrics import RequestDurations

    clients = CAClients(settings.data_dir / "ca-bundles", RequestDurations(repo))
    ctx = ServiceContext(repo=repo, sealer=sealer, ca_factory=clients)
    return Broker(settings=settings, repo=repo, ctx=ctx)
