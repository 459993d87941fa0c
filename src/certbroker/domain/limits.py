"""Staying inside the CA's rate limits, as pure functions.

Let's Encrypt allows 5 failed validations per account, hostname and hour; a broker that
retries a broken name faster than that locks its user out of that name for an hour.
certbroker stops answering challenges for a name once `cap` validations of it failed in
the last hour (3 by default, below the CA's 5) and tries again when the oldest of them
is an hour old.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

VALIDATION_WINDOW = timedelta(hours=1)


def validation_allowed_at(failures: Iterable[datetime], now: datetime, cap: int) -> datetime | None:
    """None when a validation may run now; else the moment it may (fewer than `cap`
    failures in the hour before it)."""
    recent = sorted(at for at in failures if at > now - VALIDATION_WINDOW)
    if len(recent) < cap:
        return None
    return recent[len(recent) - cap] + VALIDATION_WINDOW
