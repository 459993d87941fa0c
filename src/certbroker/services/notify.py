"""Mail: the SMTP settings (configuration, overridden by what the console or API stored),
test mails, expiry warnings, the outbox fed from the events, daily digests, and the
acknowledgement of alarms.

In `serve`, the scheduler's tick (every `scheduler_interval`) gives each certificate that
entered an expiry threshold its `expiring` event (once per threshold, whichever node
looks first: store/notify.py); `MailWorker`, a thread, turns the events after the mail
cursor into queued mails every two seconds and sends the due ones under a lease, retried
with backoff for a day.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any

from certbroker.domain.errors import CertbrokerError, NotFoundError, UsageError
from certbroker.domain.models import Event
from certbroker.domain.notify import (
    ALWAYS_MAILED,
    DEFAULT_THRESHOLDS,
    MAILED_ON_REQUEST,
    MailConfig,
    MailFacts,
    check_port,
    check_security,
    html_of,
    next_digest_at,
    parse_thresholds,
    subject_of,
    text_of,
    thresholds_entered,
)
from certbroker.ports import Mailer
from certbroker.services import audit
from certbroker.services.common import ServiceContext, validate_emails
from certbroker.services.periodic import Periodic

log = logging.getLogger("certbroker.notify")

MAIL_SETTINGS = "mail-settings"
BROKER_SETTINGS = "broker-settings"  # services/runtime.py: the console's notify_to
RETRY_CAP = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(days=1)
LEASE = timedelta(minutes=5)
_SECRET_SHOWN = "(set)"  # noqa: S105 - what is shown instead of the password


@dataclass(frozen=True)
class MailDefaults:
    """What the configuration file and environment say (the console's settings win)."""

    config: MailConfig = field(default_factory=MailConfig)
    notify_to: tuple[str, ...] = ()
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    public_url: str = ""
    retry_first: timedelta = timedelta(minutes=1)


# The settings a person may change in the console or API, and their checks.
_FIELDS = ("host", "port", "security", "user", "password", "sender")


class NotifyService:
    def __init__(self, ctx: ServiceContext, mailer: Mailer, defaults: MailDefaults) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.mailer = mailer
        self.defaults = defaults

    # -- settings ------------------------------------------------------------------------

    def _stored(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.repo.get_setting(MAIL_SETTINGS) or "{}")
        return data

    def mail_config(self) -> MailConfig:
        """The SMTP settings in force: each stored one, else the configured one."""
        stored = self._stored()
        config = self.defaults.config
        changes: dict[str, Any] = {k: stored[k] for k in _FIELDS if stored.get(k) is not None}
        if "password" in changes:
            sealed = base64.b64decode(changes["password"])
            changes["password"] = self.ctx.sealer.unseal(sealed).decode()
        return replace(config, **changes)

    def settings(self) -> dict[str, Any]:
        """What the console and API show: every mail setting, where it comes from
        ("stored" or "configuration"), the password only as set or not."""
        stored = self._stored()
        config = self.mail_config()
        shown: dict[str, Any] = {
            "host": config.host,
            "port": config.effective_port if config.host else config.port,
            "security": config.security,
            "user": config.user,
            "password": _SECRET_SHOWN if config.password else None,
            "sender": config.sender,
            "notify_on_issue": bool(stored.get("notify_on_issue", False)),
            "digest_to": list(stored.get("digest_to", [])),
            "expiry_thresholds": list(self.thresholds()),
            "recipients": list(self.global_recipients()),
            "stored": sorted(k for k in stored if stored[k] is not None),
        }
        return shown

    def update_settings(self, **changes: Any) -> dict[str, Any]:
        """Store the settings given (None: back to the configuration's); each is checked
        before anything is stored. `password` is sealed with the master key."""
        stored = self._stored()
        unknown = set(changes) - {*_FIELDS, "notify_on_issue", "digest_to", "expiry_thresholds"}
        if unknown:
            raise UsageError(f"unknown mail setting(s): {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            if value is None or value == "":
                stored.pop(name, None)
                continue
            if name == "port":
                stored[name] = check_port(_int(value, "port"))
            elif name == "security":
                stored[name] = check_security(str(value))
            elif name == "password":
                sealed = self.ctx.sealer.seal(str(value).encode())
                stored[name] = base64.b64encode(sealed).decode()
            elif name == "sender":
                stored[name] = validate_emails([str(value)])[0]
            elif name == "digest_to":
                stored[name] = validate_emails([str(v) for v in value])
            elif name == "expiry_thresholds":
                stored[name] = list(parse_thresholds(value))
            elif name == "notify_on_issue":
                stored[name] = bool(value)
            else:
                stored[name] = str(value).strip()
        before = self._stored()
        self.repo.set_setting(MAIL_SETTINGS, json.dumps(stored), self.ctx.clock())
        audit.record(
            self.ctx, "settings.mail", "settings", "mail", audit.diff(before, stored),
            secrets=[str(changes["password"])] if changes.get("password") else [],
        )  # fmt: skip
        return self.settings()

    def thresholds(self) -> tuple[int, ...]:
        stored = self._stored().get("expiry_thresholds")
        return tuple(stored) if stored else self.defaults.thresholds

    def global_recipients(self) -> tuple[str, ...]:
        """The console's list, else CERTBROKER_NOTIFY_TO."""
        console = json.loads(self.repo.get_setting(BROKER_SETTINGS) or "{}").get("notify_to")
        return tuple(console) if console else self.defaults.notify_to

    def set_recipients(self, cert_id: int, emails: Sequence[str]) -> list[str]:
        """The certificate's own recipients (empty: the global list, else its account's)."""
        self.repo.get_certificate(cert_id)  # NotFoundError
        cleaned = validate_emails(list(emails))
        before = list(self.repo.get_certificate(cert_id).notify_to)
        self.repo.set_certificate_notify_to(cert_id, cleaned)
        audit.record(self.ctx, "certificate.recipients", "certificate", cert_id,
                     {"notify_to": [before, cleaned]})  # fmt: skip
        return cleaned

    # -- sending -------------------------------------------------------------------------

    def _message(
        self, config: MailConfig, to: str, subject: str, text: str, html: str
    ) -> EmailMessage:
        if not config.enabled:
            raise UsageError(
                "no SMTP server is set: set CERTBROKER_SMTP_HOST (and _PORT, _SECURITY, "
                "_USER, _PASSWORD, _FROM), or the console's mail settings"
            )
        sender = config.sender or config.user
        if not sender or "@" not in sender:
            raise UsageError("no sender address: set CERTBROKER_SMTP_FROM (smtp_from)")
        message = EmailMessage()
        message["From"] = formataddr(("certbroker", sender))
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message

    def send_test(self, to: str) -> str:
        """A test mail to `to`, now (not queued); the SMTP server's answer."""
        (address,) = validate_emails([to])
        config = self.mail_config()
        now = self.ctx.clock()
        text = (
            f"This is a test mail from certbroker, sent {now:%Y-%m-%d %H:%M:%S} UTC through "
            f"{config.where} ({config.security}).\n\nMail works.\n"
        )
        html = f"<p>This is a test mail from certbroker, sent through {config.where}.</p>"
        message = self._message(config, address, "[certbroker] test mail", text, html)
        return self.mailer.send(config, message)

    def _link(self, cert_id: int | None) -> str | None:
        base = self.defaults.public_url
        return f"{base}/certificates/{cert_id}" if base and cert_id else None

    def send_due(self, owner: str) -> int:
        """Send the mails that are due (a digest as one mail); how many mails went out."""
        sent = 0
        config = self.mail_config()
        while True:
            now = self.ctx.clock()
            ids, digest = self.repo.claim_mails(owner, now, now + LEASE)
            if not ids:
                return sent
            items = self.repo.mail_items(ids)
            facts = [
                MailFacts(
                    i.event, i.names, i.label, i.not_after, self._link(i.event.certificate_id)
                )
                for i in items
                if i.event is not None
            ]
            try:
                if not facts:
                    raise UsageError("the event this mail was about is gone")
                subject = (
                    f"[certbroker] daily digest: {len(facts)} event(s)"
                    if digest
                    else subject_of(facts[0])
                )
                message = self._message(
                    config, items[0].recipient, subject, text_of(facts), html_of(facts)
                )
                answer = self.mailer.send(config, message)
            except CertbrokerError as exc:
                first = min(i.created_at for i in items)
                attempts = max(i.attempts for i in items) + 1
                wait = min(self.defaults.retry_first * 2 ** (attempts - 1), RETRY_CAP)
                retry: datetime | None = now + wait
                if now + wait - first > GIVE_UP_AFTER:
                    retry = None
                log.warning(
                    "mail to %s failed (%s)%s",
                    items[0].recipient,
                    exc,
                    "; given up" if retry is None else f"; again at {retry:%H:%M:%S}",
                )
                self.repo.mails_failed(ids, owner, str(exc), retry, digest=digest)
                continue
            self.repo.mails_sent(ids, owner, self.ctx.clock(), answer)
            log.info("mail to %s: %s", items[0].recipient, answer)
            sent += 1

    # -- what is mailed ------------------------------------------------------------------

    def check_expiry(self) -> int:
        """Write the `expiring` event of every certificate that entered a threshold since
        the last look (once per certificate, not-after and threshold). How many."""
        thresholds = self.thresholds()
        now = self.ctx.clock()
        found = 0
        for cand in self.repo.expiry_candidates(now, now + timedelta(days=max(thresholds))):
            days_left = (cand.not_after - now).total_seconds() / 86400
            warn, marks = thresholds_entered(days_left, thresholds, cand.warned)
            if warn is None:
                continue
            message = (
                f"expires {cand.not_after:%Y-%m-%d %H:%M} UTC: {int(days_left)} day(s) left "
                f"(threshold {warn} days) and not renewed yet"
            )
            if self.repo.warn_expiry(cand.certificate_id, cand.not_after, marks, message, now):
                found += 1
        return found

    def queue_mails(self) -> int:
        """Turn the events after the cursor into queued mails; how many events were read."""
        config = self.mail_config()
        stored = self._stored()
        on_issue = bool(stored.get("notify_on_issue", False))
        digest_to = set(stored.get("digest_to", []))
        fallback = self.global_recipients()
        now = self.ctx.clock()

        def route(
            event: Event, own: Sequence[str], contacts: Sequence[str]
        ) -> list[tuple[str, str, datetime | None]]:
            mailed = event.kind in ALWAYS_MAILED or (on_issue and event.kind in MAILED_ON_REQUEST)
            if not config.enabled or not mailed:
                return []
            recipients = list(own) or list(fallback) or list(contacts)
            return [
                (r, "digest", next_digest_at(now)) if r in digest_to else (r, "queued", None)
                for r in dict.fromkeys(recipients)
            ]

        read = 0
        while True:
            batch = self.repo.queue_mails(now, route)
            read += batch
            if batch == 0:
                return read

    def run(self, owner: str, *, expiry: bool = True) -> None:
        """One look: expiry thresholds (unless `expiry` is False), the outbox, the due
        mails."""
        if expiry:
            self.check_expiry()
        self.queue_mails()
        self.send_due(owner)

    def deliveries(self, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.repo.mail_deliveries(limit, state)]

    # -- alarms --------------------------------------------------------------------------

    def acknowledge_alarm(self, cert_id: int, until: datetime, by: str, reason: str) -> None:
        """Mute the certificate's alarm until `until` (no mail for it meanwhile, shown as
        acknowledged); a new kind of failure raises it again."""
        now = self.ctx.clock()
        if until <= now:
            raise UsageError("the acknowledgement must last until a time in the future")
        if not reason.strip():
            raise UsageError("say why the alarm is acknowledged (--reason)")
        cert = self.repo.get_certificate(cert_id)
        if cert.alarm_since is None or not self.repo.acknowledge_alarm(
            cert_id, until, by, reason.strip(), now
        ):
            raise NotFoundError(f"certificate {cert_id} has no alarm to acknowledge")
        audit.record(
            self.ctx, "alarm.acknowledge", "certificate", cert_id,
            {"until": until.isoformat(), "by": by, "reason": reason.strip()},
        )  # fmt: skip


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a whole number, not {value!r}") from None


class MailWorker(Periodic):
    """Runs the outbox and sends due mail every `interval` seconds until stopped (a thread
    of serve); the expiry look is one of the scheduler's chores."""

    def __init__(self, service: NotifyService, interval: float = 2.0) -> None:
        super().__init__("mail", lambda owner: service.run(owner, expiry=False), interval, log)
