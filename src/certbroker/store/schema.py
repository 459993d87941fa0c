"""Tables. Any change here needs an Alembic migration in store/migrations/versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    func,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect

from certbroker.domain.listing import NAME_KEY_LENGTH
from certbroker.domain.models import ACTIVE_ORDER_STATES

# "One active order per certificate", as a partial unique index (SQLite and PostgreSQL).
ACTIVE_STATES_SQL = "state IN ({})".format(", ".join(f"'{s}'" for s in ACTIVE_ORDER_STATES))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# Rendered with its numbers in the SQL (not bound), so SQLite matches it to the index.
NAME_KEY = func.substr(
    literal_column("names"), literal_column("1"), literal_column(str(NAME_KEY_LENGTH))
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("directory_url", Text, nullable=False),
    Column("ca_bundle", Text, nullable=True),
    Column("emails", Text, nullable=False, default="[]"),
    Column("key_type", String(20), nullable=False),
    Column("key_sealed", LargeBinary, nullable=False),
    # A rollover stores the new key here before telling the CA, so a crash loses nothing.
    Column("next_key_sealed", LargeBinary, nullable=True),
    Column("uri", Text, nullable=True),
    Column("status", String(20), nullable=False),
    Column("terms_of_service", Text, nullable=True),
    Column("eab_kid", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

certificates = Table(
    "certificates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("names", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("challenge", String(20), nullable=False),
    Column("key_type", String(20), nullable=False),
    Column("key_policy", String(20), nullable=False),
    Column("subject", Text, nullable=False, default="{}"),
    Column("key_sealed", LargeBinary, nullable=True),
    Column("cert_pem", Text, nullable=True),
    Column("chain_pem", Text, nullable=True),
    Column("serial", String(80), nullable=True),
    Column("issuer", Text, nullable=True),
    Column("not_before", UTCDateTime, nullable=True),
    Column("not_after", UTCDateTime, nullable=True),
    Column("fingerprint_sha256", String(100), nullable=True),
    Column("order_url", Text, nullable=True),
    Column("revocation_reason", String(40), nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("renew_at", UTCDateTime, nullable=True),
    Column("renew_before_days", Float, nullable=True),  # None: the global policy
    Column("renewal_reason", String(40), nullable=True),  # why renew_at is what it is
    # Failing: when the next order is tried (first issuance or renewal alike); None once
    # it succeeds. A person stops the retries, and renewal, with `cert disable`.
    Column("next_try_at", UTCDateTime, nullable=True),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    # Active while its issuance or renewal keeps failing; cleared by the next success.
    Column("alarm_since", UTCDateTime, nullable=True),
    Column("alarm_message", Text, nullable=True),
    # What the alarm is about (the CA's problem type, or "error"), and a person's
    # acknowledgement muting it until a date; a new kind of failure raises it again.
    Column("alarm_kind", String(200), nullable=True),
    Column("alarm_ack_until", UTCDateTime, nullable=True),
    Column("alarm_ack_by", String(200), nullable=True),
    Column("alarm_ack_reason", Text, nullable=True),
    Column("notify_to", Text, nullable=True),  # JSON list of its own mail recipients
    Column("ari_next_check", UTCDateTime, nullable=True),  # ask the CA's ARI again then
    Column("profile", String(100), nullable=True),  # the ACME profile its orders ask for
    # JSON list of account IDs tried in order when account_id's CA fails (CA fallback).
    Column("fallback_account_ids", Text, nullable=True),
    # DNS-01: the DNS account its records go through; None: the zone's default account.
    Column("dns_account_id", Integer, nullable=True),
    Column("dns_manual", Boolean, nullable=False, server_default="0"),  # a person writes them
    # What people call it and why it exists (Parallels RAS's name and description).
    Column("label", String(200), nullable=True),
    Column("description", Text, nullable=True),
    # The keystore downloads default to, and its password, sealed (Key Manager Plus).
    Column("keystore_type", String(20), nullable=True),
    Column("keystore_password_sealed", LargeBinary, nullable=True),
    # A client's certificate: the client it belongs to, and for a device that
    # keeps its key, the CSR it sent (sent to the CA as it is; no key is held here).
    Column("client_id", Integer, nullable=True),
    Column("csr_pem", Text, nullable=True),
    # The device renews it with a fresh CSR; the scheduler leaves it alone (0018).
    Column("device_renews", Boolean, nullable=False, server_default="0"),
    # A device's fresh CSR: what renewal orders send until its certificate arrives.
    Column("next_csr_pem", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_certificates_status_renew_at", "status", "renew_at"),  # the scheduler
    Index("ix_certificates_renew_at", "renew_at"),
    Index("ix_certificates_not_after", "not_after"),
    Index("ix_certificates_ari_next_check", "ari_next_check"),
    Index("ix_certificates_next_try_at", "next_try_at"),
    # Pages, the dashboard (counts, expiring, alarms) over many certificates (migration 0014).
    Index("ix_certificates_status_not_after", "status", "not_after"),
    Index("ix_certificates_alarm_since", "alarm_since"),
    Index("ix_certificates_created_at", "created_at"),
    # Pages sorted by name: the start of the names' JSON (the common name first), not all
    # of it: a B-tree entry must stay under PostgreSQL's ~2.7 kB, and 100 names do not.
    Index("ix_certificates_name_key", NAME_KEY),
    Index("ix_certificates_client_id", "client_id"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("certificate_id", Integer, ForeignKey("certificates.id"), nullable=False),
    Column("state", String(20), nullable=False),
    Column("order_url", Text, nullable=True),
    # The order URL a person gave up (`cert verify --new-challenge`), never resumed.
    Column("abandoned_url", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("next_run_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),  # queued
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),  # first taken by a worker
    # The holder took it from one that never let it go (migration 0026).
    Column("taken_over", Boolean, nullable=False, server_default=false()),
    Column("purpose", String(20), nullable=False, server_default="issue"),  # issue | renew
    # A renewal's new private key, until the new certificate replaces the old one.
    Column("key_sealed", LargeBinary, nullable=True),
    Column("replaces", Text, nullable=True),  # ARI certID of the certificate it renews
    Column("account_id", Integer, nullable=True),  # None: the certificate's account_id
    Index("ix_orders_certificate_id", "certificate_id"),
    Index("ix_orders_state_next_run", "state", "next_run_at"),
    # Migrations create it with the same WHERE on PostgreSQL too; naming
    # postgresql_where here would load the PostgreSQL dialect in every process (~20 ms).
    Index(
        "ux_orders_one_active_per_certificate",
        "certificate_id",
        unique=True,
        sqlite_where=text(ACTIVE_STATES_SQL),
    ),
)

# Certificates that were replaced (renewed), newest last; the current one is on
# `certificates`.
certificate_history = Table(
    "certificate_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("certificate_id", Integer, ForeignKey("certificates.id"), nullable=False),
    Column("serial", String(80), nullable=False),
    Column("issuer", Text, nullable=True),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("fingerprint_sha256", String(100), nullable=True),
    Column("cert_pem", Text, nullable=False),
    Column("chain_pem", Text, nullable=True),
    Column("key_sealed", LargeBinary, nullable=True),
    Column("order_url", Text, nullable=True),
    Column("status", String(20), nullable=False),  # what it was when replaced
    Column("replaced_at", UTCDateTime, nullable=False),
    Column("replaced_because", Text, nullable=False),
    Index("ix_certificate_history_certificate_id", "certificate_id"),
)

# Tokens live here, not in a process, so any process on the store answers HTTP-01.
challenges = Table(
    "challenges",
    metadata,
    Column("token", String(200), primary_key=True),
    Column("key_authorization", Text, nullable=False),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=True),
    Column("identifier", String(255), nullable=False),
    Column("type", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_challenges_order_id", "order_id"),
)

# What happened, for people: every failed attempt with the CA's problem, every issuance
# and renewal, alarms raised and cleared. Kept when the certificate is deleted.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("certificate_id", Integer, nullable=True),
    Column("order_id", Integer, nullable=True),
    Column("kind", String(40), nullable=False),
    Column("message", Text, nullable=False),
    Column("problem", Text, nullable=True),  # the CA's problem document, JSON
    Index("ix_events_certificate_id", "certificate_id", "id"),
    Index("ix_events_at", "at"),
)

# Failed validations per account and name: certbroker stops answering challenges for a
# name that failed too often in the last hour (domain/limits.py).
validation_failures = Table(
    "validation_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, nullable=False),
    Column("name", String(255), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_validation_failures_account_name_at", "account_id", "name", "at"),
)

# Settings changed while serve runs (`certbroker log-level`); every process polls them.
runtime_settings = Table(
    "runtime_settings",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# DNS providers' credentials: `settings` in clear (server, key name...), secrets sealed.
dns_accounts = Table(
    "dns_accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("provider", String(100), nullable=False),
    Column("settings", Text, nullable=False, default="{}"),  # JSON, not secret
    Column("secrets_sealed", LargeBinary, nullable=False),  # sealed JSON of the secret options
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# The default DNS account of a zone and every name below it.
dns_zones = Table(
    "dns_zones",
    metadata,
    Column("zone", String(255), primary_key=True),
    Column("dns_account_id", Integer, ForeignKey("dns_accounts.id"), nullable=False),
)

# Every TXT record certbroker writes, stored BEFORE it is written, so that the records of
# an order are removed after success, failure or a crash in between, and only those.
dns_records = Table(
    "dns_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # No foreign key: a record outlives its order (a deleted certificate) until removed.
    Column("order_id", Integer, nullable=False),
    Column("identifier", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("value", String(255), nullable=False),
    Column("dns_account_id", Integer, nullable=True),  # None: manual, a person writes it
    Column("written", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("cleanup_error", Text, nullable=True),  # why the last removal failed
    Column("cleanup_after", UTCDateTime, nullable=True),  # do not retry the removal before
    Index("ix_dns_records_order_id", "order_id"),
)

# -- access: people, API tokens, console sessions ------------------------------------------

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("password_hash", Text, nullable=False),  # argon2id
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("password_changed_at", UTCDateTime, nullable=False),
)

# API tokens: only a SHA-256 of each is kept (a token is 256 random bits; a slow hash
# would add nothing but time to every request).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(20), nullable=False),
    Column("names", Text, nullable=False, server_default="[]"),  # JSON name patterns
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(100), nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("last_used_from", String(100), nullable=True),
)

# Console sessions, in the store so any process or node knows them; the cookie holds the
# session's secret, the store its SHA-256.
sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("address", String(100), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_sessions_user_id", "user_id"),
)

# Failed log-ins, per user name and per address, for throttling across processes.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_name", String(100), nullable=False),
    Column("address", String(100), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_login_failures_user_at", "user_name", "at"),
    Index("ix_login_failures_address_at", "address", "at"),
)

# Idempotency-Key: the first answer to a (caller, key), replayed for the same request.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(100), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=True),  # None: the first request still runs
    Column("body", Text, nullable=True),
    Column("location", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # What the first request did ("certificate:ID:ORDER"), in the transaction that did it.
    Column("work_done", String(100), nullable=True),
    Index("ux_idempotency_owner_key", "owner", "key", unique=True),
    Index("ix_idempotency_created_at", "created_at"),
)

# Clients (devices, gateways, load balancers, servers) that obtain certificates for
# themselves; only a SHA-256 of each client's token is kept.
clients = Table(
    "clients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("token_prefix", String(20), nullable=False),
    Column("allow", Text, nullable=False, server_default="[]"),  # JSON name patterns
    Column("wildcard", Boolean, nullable=False, server_default="0"),
    Column("policy", String(20), nullable=False, server_default="deny"),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("token_rotated_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=True),
    Column("last_seen_from", String(100), nullable=True),
    Column("account_id", Integer, nullable=True),  # None: the only ACME account (0018)
    Column("renewal", String(10), nullable=False, server_default="device"),  # or broker
    Column("agent_at", UTCDateTime, nullable=True),  # an agent of it last connected (0020)
)

# Every CSR a client sent: accepted at once (certificate_id), or waiting for an admin's
# approval, or denied. The CSR is kept until it is decided.
device_requests = Table(
    "device_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", Integer, nullable=False),
    Column("names", Text, nullable=False),  # JSON
    Column("challenge", String(20), nullable=False),
    Column("csr_pem", Text, nullable=False),
    Column("state", String(30), nullable=False),
    Column("certificate_id", Integer, nullable=True),
    Column("reason", Text, nullable=True),
    Column("decided_by", String(100), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("renewal", String(10), nullable=True),  # device | broker; None: the client's
    Index("ix_device_requests_client_id", "client_id"),
    Index("ix_device_requests_state", "state"),
)

# Push targets (0019): where a certificate's files go after every issuance and renewal.
# Contents, not paths, are kept (the SSH identity and a PKCS#12 password sealed, the
# known_hosts lines in clear), so any node on the store can deploy.
targets = Table(
    "targets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("kind", String(10), nullable=False),  # ssh | local
    Column("hosts", Text, nullable=False, server_default="[]"),  # JSON [user, host, port]
    Column("path", Text, nullable=False),
    Column("files", Text, nullable=False),  # JSON: file names, owner, modes
    Column("reload", Text, nullable=True),
    Column("verify", String(300), nullable=True),  # host:port
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("known_hosts", Text, nullable=True),
    Column("identity_sealed", LargeBinary, nullable=True),
    Column("pkcs12_password_sealed", LargeBinary, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

certificate_targets = Table(
    "certificate_targets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "certificate_id",
        Integer,
        ForeignKey("certificates.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ux_certificate_targets_pair", "certificate_id", "target_id", unique=True),
    Index("ix_certificate_targets_target_id", "target_id"),
)

# One certificate (one serial) to one target; a failed one waits for next_try_at.
deployments = Table(
    "deployments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "certificate_id",
        Integer,
        ForeignKey("certificates.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("serial", String(100), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_try_at", UTCDateTime, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("output_tail", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("alarm_since", UTCDateTime, nullable=True),
    Index("ix_deployments_due", "state", "next_try_at"),
    Index("ix_deployments_certificate_target", "certificate_id", "target_id"),
)


# Gateway agents (migration 0020). Which client's agent answers which
# agent-http-01 token now: the order answers the CA once every live agent allowed the
# name has it.
challenge_acks = Table(
    "challenge_acks",
    metadata,
    Column("token", String(200), primary_key=True),
    Column("client_id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
)

# Per client and certificate: what its agent installed, and the alarm of a failed
# install or of drift (an old serial still installed near the old one's expiry).
installations = Table(
    "installations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", Integer, nullable=False),
    Column("certificate_id", Integer, nullable=False),
    Column("key_mode", String(10), nullable=False),  # local (a CSR) | broker (key held here)
    Column("serial", String(80), nullable=True),  # installed
    Column("not_after", UTCDateTime, nullable=True),  # ... valid until
    Column("installed_at", UTCDateTime, nullable=True),
    Column("reload_status", Integer, nullable=True),
    Column("output_tail", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("alarm_since", UTCDateTime, nullable=True),
    Column("reported_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ux_installations_client_cert", "client_id", "certificate_id", unique=True),
    Index("ix_installations_certificate_id", "certificate_id"),
)

# Expiry warnings sent: one row per certificate, not-after and threshold (days left), so
# each goes out once, whichever process or node looks first (migration 0023).
expiry_warnings = Table(
    "expiry_warnings",
    metadata,
    Column("certificate_id", Integer, primary_key=True),
    Column("not_after", UTCDateTime, primary_key=True),
    Column("threshold", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
)

# One mail to one recipient for one event; `digest` rows wait for the recipient's daily
# digest. Sent under a lease, retried with backoff, `dead` a day after the first try.
mail_deliveries = Table(
    "mail_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Integer, nullable=True),  # none: a test mail
    Column("recipient", String(320), nullable=False),
    Column("state", String(20), nullable=False),  # queued, digest, sending, sent, failed, dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_try_at", UTCDateTime, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("answer", Text, nullable=True),  # the SMTP server's answer
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Index("ux_mail_deliveries_event_recipient", "event_id", "recipient", unique=True),
    Index("ix_mail_deliveries_state_next", "state", "next_try_at"),
)

# The ACME request-duration histogram, summed over every process and node.
acme_request_stats = Table(
    "acme_request_stats",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("method", String(10), primary_key=True),
    Column("status", String(10), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("total", Float, nullable=False),
    Column("buckets", Text, nullable=False),  # JSON: counts per bucket, not cumulative
)

# The audit log (migration 0021): who did what, when, from where. Append-only:
# the repository has no update or delete for it, and triggers refuse both.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor_kind", String(20), nullable=False),  # user|token|client|cli|system|anonymous
    Column("actor", String(200), nullable=False),
    Column("address", String(100), nullable=True),
    Column("action", String(100), nullable=False),  # certificate.export-key, user.add, ...
    Column("object_type", String(50), nullable=True),
    Column("object_id", String(200), nullable=True),
    Column("outcome", String(10), nullable=False),  # ok | refused
    Column("details", Text, nullable=False, server_default="{}"),  # JSON, secrets removed
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_actor", "actor", "id"),
)

# Webhooks (migration 0022): endpoints with their signing secret sealed, the
# event groups they get, and whether private addresses are allowed. `after_event_id`: a
# webhook gets only the events after it was added. The outbox's cursor over events.id is
# `runtime_settings` row `webhook-cursor`, advanced in the transaction that queues the
# deliveries (store/webhooks.py).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    Column("events", Text, nullable=False),  # JSON list of event groups (issued, alarm, …)
    Column("format", String(10), nullable=False),  # json | slack | teams
    Column("allow_private", Boolean, nullable=False, server_default="0"),
    Column("description", Text, nullable=True),
    Column("secret_sealed", LargeBinary, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("disabled_reason", Text, nullable=True),  # e.g. the receiver answered 410 Gone
    Column("after_event_id", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# One event to one webhook (or a test message: no event), sent under a lease, retried
# with backoff until a day after the first attempt, then `dead`. `payload`: the body as
# first sent, so every retry sends the same bytes under the same `message_id`.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("webhook_id", Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", Integer, nullable=True),  # none: a test message
    Column("message_id", String(64), nullable=False, unique=True),
    Column("kind", String(40), nullable=False),
    Column("state", String(20), nullable=False),  # queued, sending, failed, delivered, dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_try_at", UTCDateTime, nullable=True),
    Column("first_attempt_at", UTCDateTime, nullable=True),
    Column("last_attempt_at", UTCDateTime, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_response", Text, nullable=True),  # the first 300 bytes of the answer
    Column("last_error", Text, nullable=True),
    Column("payload", Text, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    Index("ux_webhook_deliveries_pair", "webhook_id", "event_id", unique=True),
    Index("ix_webhook_deliveries_due", "state", "next_try_at"),
    Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
)

# Rate-limit budgets (migration 0025): one row per new order sent to a CA for each scope it
# counts against ("account:ID", "domain:example.com"), and the CA's own word (a rateLimited
# answer's Retry-After) holding a scope until a time.
budget_spends = Table(
    "budget_spends",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ca", String(300), nullable=False),  # the CA's directory URL
    Column("scope", String(300), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("order_id", Integer, nullable=True),
    Index("ix_budget_spends_scope", "ca", "scope", "at"),
)

budget_blocks = Table(
    "budget_blocks",
    metadata,
    Column("ca", String(300), primary_key=True),
    Column("scope", String(300), primary_key=True),
    Column("until", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
)


# Ids are never given to a new object: on SQLite an `id` without AUTOINCREMENT
# is the highest rowid plus one, so the newest row's id came back after it was deleted.
# PostgreSQL's sequences never hand one out twice. Migration 0027 rebuilt older stores.
for _table in metadata.tables.values():
    if "id" in _table.c and _table.c.id.primary_key and _table.c.id.autoincrement is True:
        _table.dialect_kwargs["sqlite_autoincrement"] = True
