"""Rate-limit budgets: how many new orders a CA takes before it says rateLimited, as pure
rules.

Let's Encrypt allows each account 300 new orders per 3 hours, and 50 certificates per
registered domain (the name under its public suffix: www.example.co.uk -> example.co.uk)
per 7 days, counted over every account; a renewal (the same names as before) is not
held back by the domain limit but counts towards it. A broker renewing thousands of
certificates keeps its own count of both, over every process and node, and keeps an
order queued until the window has room instead of sending it and being refused.

A budget is "at most `limit` in any `window`". Let's Encrypt counts with a token bucket
of `limit` tokens refilled over `window`; any sequence of requests with at most `limit`
in every window also passes that bucket, so the sliding window is the safe side of it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from certbroker.domain.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUDGET = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*([smhdw])\s*$")

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Budget:
    """At most `limit` in any `window`."""

    limit: int
    window: timedelta

    def __str__(self) -> str:
        seconds = int(self.window.total_seconds())
        for unit in ("d", "h", "m"):
            if seconds % _UNITS[unit] == 0:
                return f"{self.limit}/{seconds // _UNITS[unit]}{unit}"
        return f"{self.limit}/{seconds}s"


@dataclass(frozen=True)
class CaBudgets:
    """The budgets of one CA (its directory URL); None: not counted."""

    orders_per_account: Budget | None = None
    certificates_per_domain: Budget | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "orders_per_account": _text(self.orders_per_account),
            "certificates_per_domain": _text(self.certificates_per_domain),
        }


# Let's Encrypt's published limits (letsencrypt.org/docs/rate-limits, staging/ for the
# staging environment's), built in; any other CA has none until a person sets them.
BUILT_IN: Mapping[str, CaBudgets] = {
    LETS_ENCRYPT: CaBudgets(Budget(300, timedelta(hours=3)), Budget(50, timedelta(days=7))),
    LETS_ENCRYPT_STAGING: CaBudgets(
        Budget(1500, timedelta(hours=3)), Budget(30000, timedelta(days=7))
    ),
}

FIELDS = ("orders_per_account", "certificates_per_domain")


def _text(budget: Budget | None) -> str | None:
    return None if budget is None else str(budget)


def parse_budget(text: str, what: str = "budget") -> Budget | None:
    """'300/3h', '50/7d', '10/30s', '10 per 1m'; 'none' or '' for no budget."""
    if text.strip().lower() in ("", "none", "off"):
        return None
    match = _BUDGET.match(text.lower())
    if not match or int(match.group(1)) < 1 or match.group(2) == "0":
        raise UsageError(
            f"{what} {text!r} is not a budget; write it as COUNT/WINDOW, e.g. 300/3h, "
            "50/7d or 10/30s (units s, m, h, d, w), or 'none' for no budget"
        )
    window = int(match.group(2) or 1) * _UNITS[match.group(3)]
    if window > 366 * 86400:
        raise UsageError(f"{what} {text!r}: a window longer than a year is not a budget")
    return Budget(int(match.group(1)), timedelta(seconds=window))


def effective(directory_url: str, overrides: Mapping[str, Any]) -> CaBudgets:
    """The built-in budgets of this CA with a person's settings (field by field) on top:
    `overrides` holds, per field, a budget's text or None for "not counted"."""
    base = BUILT_IN.get(directory_url.rstrip("/"), CaBudgets())
    values = {
        field: parse_budget(overrides[field], field) if overrides.get(field) else None
        for field in FIELDS
        if field in overrides
    }
    return CaBudgets(
        orders_per_account=values.get("orders_per_account", base.orders_per_account),
        certificates_per_domain=values.get("certificates_per_domain", base.certificates_per_domain),
    )


def opens_at(times: Iterable[datetime], now: datetime, budget: Budget) -> datetime | None:
    """None when one more fits the budget now, else the moment it will: fewer than
    `limit` of `times` in the window before it."""
    recent = sorted(at for at in times if at > now - budget.window)
    if len(recent) < budget.limit:
        return None
    return recent[len(recent) - budget.limit] + budget.window


# --- registered domains ----------------------------------------------------------------------

_extract: Any = None
_extract_lock = threading.Lock()


def registered_domain(name: str) -> str:
    """The name under its public suffix, as Let's Encrypt counts certificates
    (www.example.co.uk -> example.co.uk), from the public suffix list bundled with
    tldextract (never downloaded). A name under no known suffix counts by its last two
    labels."""
    global _extract
    name = name.lower().rstrip(".").removeprefix("*.")
    with _extract_lock:
        if _extract is None:
            import tldextract

            os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
            _extract = tldextract.TLDExtract(
                suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True
            )
    parts = _extract(name)
    if parts.suffix and parts.domain:
        return f"{parts.domain}.{parts.suffix}"
    return ".".join(name.split(".")[-2:])


def registered_domains(names: Iterable[str]) -> list[str]:
    return sorted({registered_domain(n) for n in names})


# --- what the CA says --------------------------------------------------------------------------


def limit_named(detail: str) -> str:
    """Which of the CA's limits a rateLimited problem names: 'domain' (certificates per
    registered domain), 'names' (this exact set of names) or 'account' (new orders, and
    anything not recognised: the safe side is to hold the whole account)."""
    text = detail.lower()
    if "exact set" in text or "duplicate" in text:
        return "names"
    if "registered domain" in text or "already issued for" in text:
        return "domain"
    return "account"
