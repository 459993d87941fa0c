"""Moments as people write them: an ISO 8601 date or time, or an age (30m, 12h, 7d, 2w).
`certbroker events|audit --since`, `alarms acknowledge --until`, the API's `since` and
the console's Since field read them alike."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from certbroker.domain.errors import UsageError

_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime, field: str = "since") -> datetime:
    """The moment `text` names, an age counted back from `now` (UTC unless it says
    otherwise); UsageError naming `field` (the flag, parameter or form field it came
    from) when it names none."""
    return _moment(text, now, field, -1, "(2026-11-22, 2026-11-22T08:00) nor an age")


def parse_until(text: str, now: datetime, field: str = "until") -> datetime:
    """A moment ahead: a date/time, or a duration from now (30m, 12h, 3d, 2w)."""
    return _moment(text, now, field, 1, "(2026-12-24, 2026-12-24T08:00) nor a duration")


def _moment(text: str, now: datetime, field: str, direction: int, neither: str) -> datetime:
    value = text.strip()
    match = _RELATIVE.match(value.lower())
    if match:
        return now + direction * timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{field} {text!r} is neither a date/time {neither} (30m, 12h, 7d, 2w)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)
