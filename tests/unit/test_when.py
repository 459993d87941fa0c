"""Moments as people type them, read alike by the CLI, the API and the console."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certbroker.domain.errors import UsageError
from certbroker.domain.when import parse_since, parse_until

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


def test_an_age_counts_back_and_a_duration_forward() -> None:
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since(" 30M ", NOW) == NOW - timedelta(minutes=30)
    assert parse_until("2w", NOW) == NOW + timedelta(weeks=2)


def test_a_date_without_a_zone_is_utc() -> None:
    assert parse_since("2026-11-22", NOW) == datetime(2026, 11, 22, tzinfo=UTC)
    assert parse_until("2026-12-24T08:00+01:00", NOW).utcoffset() == timedelta(hours=1)


def test_what_is_neither_is_refused_naming_where_it_came_from() -> None:
    with pytest.raises(UsageError, match=r"^--since 'yesterday' is neither a date/time"):
        parse_since("yesterday", NOW, "--since")
    with pytest.raises(UsageError, match=r"^Since '5y' is neither .* nor an age"):
        parse_since("5y", NOW, "Since")
    with pytest.raises(UsageError, match=r"^until 'soon' is neither .* nor a duration"):
        parse_until("soon", NOW)
