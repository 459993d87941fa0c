"""Reading a CA's answers (certbroker.ca.answers): the shapes real CAs send are taken, any
other is a BadAnswer naming the URL, the field and what was there. The end-to-end side,
through Pebble and step-ca, is in tests/integration/test_ca_surprises.py and
test_step_ca.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from certbroker.ca.answers import (
    Answer,
    BadAnswer,
    NotJson,
    account_of,
    directory_of,
    order_urls,
    renewal_info_of,
)

URL = "https://ca.test/acme/x"


def response(body: bytes, content_type: str = "application/json") -> requests.Response:
    answer = requests.Response()
    answer._content = body
    answer.status_code = 200
    answer.headers["Content-Type"] = content_type
    answer.url = URL
    return answer


def of(value: Any) -> Answer:
    return Answer.of(response(json.dumps(value).encode()))


def test_orders_lists_in_both_shapes() -> None:
    assert order_urls(of({"orders": ["https://ca.test/o/1"]})) == ["https://ca.test/o/1"]
    assert order_urls(of(["https://ca.test/o/2"])) == ["https://ca.test/o/2"]  # step-ca
    assert order_urls(of({})) == []
    with pytest.raises(BadAnswer, match="a list of order URLs"):
        order_urls(of([1, 2]))
    with pytest.raises(BadAnswer, match='"orders" as a list of strings'):
        order_urls(of({"orders": "https://ca.test/o/1"}))


def test_a_body_that_is_no_json_says_what_it_was() -> None:
    with pytest.raises(
        NotJson, match=r"https://ca.test/acme/x answered a body that is not JSON \(text/html\)"
    ):
        Answer.of(response(b"<html>", "text/html"))


def test_accounts_without_contact_or_status() -> None:
    """Google's and ZeroSSL's EAB accounts may come back with neither."""
    info = account_of(of({}), "https://ca.test/acct/1")
    assert (info.status, info.contacts) == ("valid", ())
    with pytest.raises(BadAnswer, match='"contact" as a list of strings'):
        account_of(of({"contact": "mailto:a@example.com"}), "https://ca.test/acct/1")


def test_the_directory_needs_its_three_urls_and_an_object_for_meta() -> None:
    good = {"newNonce": "n", "newAccount": "a", "newOrder": "o"}
    assert directory_of(of(good)) == good
    with pytest.raises(BadAnswer, match='nothing where ACME expects "newNonce" as a string'):
        directory_of(of({"newAccount": "a", "newOrder": "o"}))
    with pytest.raises(BadAnswer, match='a list where ACME expects "meta" as a JSON object'):
        directory_of(of({**good, "meta": []}))


def test_renewal_windows_are_times() -> None:
    window = {"suggestedWindow": {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00"}}
    info = renewal_info_of(of(window), 60.0)
    assert info.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert info.end == datetime(2026, 12, 2, tzinfo=UTC)  # no zone: UTC
    with pytest.raises(BadAnswer, match=r'"suggestedWindow\.start" as an RFC 3339 time'):
        renewal_info_of(of({"suggestedWindow": {"start": "soon", "end": "later"}}), None)
    with pytest.raises(BadAnswer, match='nothing where ACME expects "suggestedWindow"'):
        renewal_info_of(of({}), None)
