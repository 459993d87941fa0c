"""Mail notifications, the pure part: the SMTP settings and their checks, the expiry
thresholds, which events are mailed, when a digest goes out, and each mail's text and HTML.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from certbroker.domain.errors import UsageError
from certbroker.domain.models import Event, EventKind

SECURITY = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
DEFAULT_THRESHOLDS = (30, 14, 7, 3, 1)
DIGEST_HOUR = 7  # UTC: when the daily digest goes out

# What is mailed: an expiry threshold entered, the first failure of a run (the alarm
# raised, again for a new kind of failure), the alarm cleared, a revocation; issuance and
# renewal only where the settings say so.
ALWAYS_MAILED = frozenset(
    {EventKind.EXPIRING, EventKind.ALARM_RAISED, EventKind.ALARM_CLEARED, EventKind.REVOKED}
)
MAILED_ON_REQUEST = frozenset({EventKind.ISSUED, EventKind.RENEWED})


@dataclass(frozen=True)
class MailConfig:
    """Where and how mail goes out; `host` empty: it does not."""

    host: str = ""
    port: int = 0
    security: str = "starttls"
    user: str = ""
    password: str = field(default="", repr=False)
    sender: str = ""
    timeout: float = 15.0

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    @property
    def where(self) -> str:
        return f"{self.host}:{self.effective_port}"


def check_security(value: str) -> str:
    security = value.strip().lower()
    if security not in SECURITY:
        raise UsageError(f"smtp_security {value!r}: choose none, starttls or tls")
    return security


def check_port(value: int) -> int:
    if not 0 <= value < 65536:
        raise UsageError(f"smtp_port {value}: a TCP port (1-65535), or 0 for the default")
    return value


def parse_thresholds(text: str | Iterable[int]) -> tuple[int, ...]:
    """ "30,14,7,3,1" (or numbers) as days, largest first; each a whole number of days."""
    parts: list[str | int] = (
        [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    )
    days: set[int] = set()
    for part in parts:
        try:
            day = int(part)
        except (TypeError, ValueError):
            raise UsageError(
                f"expiry_thresholds: {part!r} is not a whole number of days (e.g. 30,14,7,3,1)"
            ) from None
        if not 0 < day <= 365:
            raise UsageError(f"expiry_thresholds: {day} is not between 1 and 365 days")
        days.add(day)
    if not days:
        raise UsageError("expiry_thresholds: give at least one number of days (e.g. 30,14,7,3,1)")
    return tuple(sorted(days, reverse=True))


def check_public_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"public_url {url!r}: the console's address as people reach it, "
                "e.g. https://certbroker.example.com"
            )
    return url


def thresholds_entered(
    days_left: float, thresholds: Sequence[int], warned: Iterable[int]
) -> tuple[int | None, list[int]]:
    """For a certificate with `days_left`: the threshold to warn about now (the smallest
    one it has entered and was not warned about; None: nothing new) and every threshold to
    mark as done with it (a certificate found with 5 days left is warned once, about 7,
    not about 30 and 14 as well)."""
    done = set(warned)
    entered = [t for t in thresholds if days_left <= t and t not in done]
    if not entered:
        return None, []
    return min(entered), entered


def next_digest_at(now: datetime, hour: int = DIGEST_HOUR) -> datetime:
    """The next daily digest after `now`: `hour` o'clock UTC."""
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)


@dataclass(frozen=True)
class MailFacts:
    """What a mail about one event says of its certificate."""

    event: Event
    names: tuple[str, ...] = ()
    label: str | None = None
    not_after: datetime | None = None
    link: str | None = None  # its console page

    def days_left(self) -> int | None:
        if self.not_after is None:
            return None
        return max(0, int((self.not_after - self.event.at).total_seconds() // 86400))


_TITLES = {
    EventKind.EXPIRING: "expires in {days} day(s)",
    EventKind.ALARM_RAISED: "failing",
    EventKind.ALARM_CLEARED: "working again",
    EventKind.REVOKED: "revoked",
    EventKind.ISSUED: "issued",
    EventKind.RENEWED: "renewed",
}


def subject_of(facts: MailFacts) -> str:
    what = _TITLES.get(facts.event.kind, facts.event.kind.value)
    days = facts.days_left()
    title = what.format(days=days if days is not None else "?")
    name = facts.label or (facts.names[0] if facts.names else "")
    cert = f"certificate {facts.event.certificate_id}" if facts.event.certificate_id else ""
    return f"[certbroker] {cert} {name} {title}".replace("  ", " ").strip()


def text_of(facts: Sequence[MailFacts]) -> str:
    """The plain-text body of a mail about one event, or a digest of several."""
    blocks = []
    for fact in facts:
        lines = [subject_of(fact).removeprefix("[certbroker] ")]
        if fact.names:
            lines.append(f"  names:     {', '.join(fact.names)}")
        days = fact.days_left()
        if fact.not_after is not None:
            lines.append(f"  expires:   {fact.not_after:%Y-%m-%d %H:%M} UTC ({days} days left)")
        lines.append(f"  what:      {fact.event.message}")
        if fact.event.problem is not None:
            lines.append(f"  CA's error: {fact.event.problem.type}: {fact.event.problem.detail}")
        lines.append(f"  when:      {fact.event.at:%Y-%m-%d %H:%M:%S} UTC")
        if fact.link:
            lines.append(f"  console:   {fact.link}")
        blocks.append("\n".join(lines))
    head = (
        f"certbroker: {len(facts)} things happened since the last digest.\n\n"
        if len(facts) > 1
        else ""
    )
    return head + "\n\n".join(blocks) + "\n\n-- \ncertbroker\n"


def html_of(facts: Sequence[MailFacts]) -> str:
    """The HTML body: the same as the text, as a table per event."""
    parts = ["<html><body style='font-family:sans-serif'>"]
    if len(facts) > 1:
        parts.append(f"<p>{len(facts)} things happened since the last digest.</p>")
    for fact in facts:
        e = html.escape
        title = e(subject_of(fact).removeprefix("[certbroker] "))
        heading = f"<a href='{e(fact.link)}'>{title}</a>" if fact.link else title
        rows = []
        if fact.names:
            rows.append(("Names", e(", ".join(fact.names))))
        if fact.not_after is not None:
            rows.append(
                (
                    "Expires",
                    f"{fact.not_after:%Y-%m-%d %H:%M} UTC ({fact.days_left()} days left)",
                )
            )
        rows.append(("What", e(fact.event.message)))
        if fact.event.problem is not None:
            rows.append(
                ("CA's error", e(f"{fact.event.problem.type}: {fact.event.problem.detail}"))
            )
        rows.append(("When", f"{fact.event.at:%Y-%m-%d %H:%M:%S} UTC"))
        cells = "".join(
            f"<tr><th align='left' style='padding-right:1em'>{k}</th><td>{v}</td></tr>"
            for k, v in rows
        )
        parts.append(f"<h3>{heading}</h3><table>{cells}</table>")
    parts.append("<p style='color:#666'>certbroker</p></body></html>")
    return "".join(parts)
