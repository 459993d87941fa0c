"""The pure rules of mail: which expiry threshold a certificate is warned about, the
thresholds' and settings' checks, when the digest goes out, what a mail says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certbroker.domain.errors import AcmeProblem, UsageError
from certbroker.domain.models import Event, EventKind
from certbroker.domain.notify import (
    MailConfig,
    MailFacts,
    check_security,
    html_of,
    next_digest_at,
    parse_thresholds,
    subject_of,
    text_of,
    thresholds_entered,
)

T = (30, 14, 7, 3, 1)


def test_a_certificate_is_warned_once_about_the_smallest_threshold_it_entered() -> None:
    assert thresholds_entered(45, T, ()) == (None, [])
    assert thresholds_entered(29.9, T, ()) == (30, [30])
    assert thresholds_entered(29.9, T, (30,)) == (None, [])
    assert thresholds_entered(13, T, (30,)) == (14, [14])
    # Found late (the broker was down): one warning, the thresholds passed marked too.
    warn, marks = thresholds_entered(2.5, T, (30,))
    assert warn == 3 and sorted(marks) == [3, 7, 14]
    assert thresholds_entered(2.5, T, (30, 14, 7, 3)) == (None, [])


def test_thresholds_and_security_are_checked() -> None:
    assert parse_thresholds("7, 30,14") == (30, 14, 7)
    assert parse_thresholds([1, 1, 3]) == (3, 1)
    for bad, message in [("30,x", "'x' is not a whole number"), ("0", "between 1 and 365"),
                         ("", "at least one"), ("400", "between 1 and 365")]:  # fmt: skip
        with pytest.raises(UsageError, match=message):
            parse_thresholds(bad)
    assert check_security(" STARTTLS ") == "starttls"
    with pytest.raises(UsageError, match="choose none, starttls or tls"):
        check_security("ssl")
    assert MailConfig(host="h", security="tls").effective_port == 465
    assert MailConfig(host="h", port=2525).where == "h:2525"


def test_the_digest_goes_out_at_seven_utc_the_next_time_it_comes() -> None:
    morning = datetime(2026, 11, 30, 6, 59, tzinfo=UTC)
    assert next_digest_at(morning) == datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    assert next_digest_at(morning + timedelta(minutes=1)) == datetime(2026, 12, 1, 7, tzinfo=UTC)


def test_a_mail_names_the_certificate_days_left_the_error_and_its_page() -> None:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    problem = AcmeProblem("urn:ietf:params:acme:error:dns", "no TXT record <b>")
    event = Event(1, at, EventKind.ALARM_RAISED, "renewal failed", certificate_id=7,
                  problem=problem)  # fmt: skip
    page = "https://cb.example.com/certificates/7"
    fact = MailFacts(
        event, ("www.example.com", "example.com"), None, at + timedelta(days=9, hours=1), page
    )
    assert subject_of(fact) == "[certbroker] certificate 7 www.example.com failing"
    text = text_of([fact])
    assert "www.example.com, example.com" in text and "(9 days left)" in text
    assert "urn:ietf:params:acme:error:dns: no TXT record <b>" in text
    assert "https://cb.example.com/certificates/7" in text
    html = html_of([fact])
    assert "no TXT record &lt;b&gt;" in html and "no TXT record <b>" not in html  # escaped
    assert "href='https://cb.example.com/certificates/7'" in html
    expiring = Event(2, at, EventKind.EXPIRING, "expires", certificate_id=7)
    assert subject_of(
        MailFacts(expiring, ("a.example.com",), "Web front", at + timedelta(days=13, hours=2))
    ) == ("[certbroker] certificate 7 Web front expires in 13 day(s)")
    assert "2 things happened" in text_of([fact, fact])
