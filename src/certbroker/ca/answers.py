"""A CA's answers, read field by field.

Nothing a CA sends may crash certbroker: a body that is not JSON, a list where an
object belongs, a missing or mistyped field becomes `BadAnswer`, which the client turns
into a `PermanentError` naming the CA's URL and what was expected (a body that is not
JSON at all, as a proxy's error page, into a `TransientError`). The shapes real CAs send
are accepted: step-ca lists an account's orders as a bare JSON array, Let's Encrypt
names no orders URL, Google's and ZeroSSL's accounts may carry no contact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import requests

from certbroker.domain.errors import AcmeProblem
from certbroker.ports import (
    AccountInfo,
    AuthorizationInfo,
    ChallengeInfo,
    OrderInfo,
    RenewalInfo,
)


class BadAnswer(Exception):
    """The CA answered `url` with something other than what ACME says belongs there."""

    def __init__(self, url: str, expected: str, found: str) -> None:
        super().__init__(f"{url} answered {found} where ACME expects {expected}")
        self.url = url


class NotJson(BadAnswer):
    """The body is no JSON at all: a proxy's or a maintenance page, most often."""


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


class Answer:
    """One JSON value of a CA's answer, with where it came from for the messages."""

    def __init__(self, url: str, value: Any, path: str = "") -> None:
        self.url = url
        self.value = value
        self.path = path

    @classmethod
    def of(cls, response: requests.Response, url: str | None = None) -> Answer:
        """The answer's JSON body; NotJson when there is none."""
        where = url or str(getattr(response, "url", "") or "?")
        try:
            return cls(where, response.json())
        except ValueError:
            kind = response.headers.get("Content-Type") or "no content type"
            raise NotJson(where, "JSON", f"a body that is not JSON ({kind})") from None

    def fail(self, expected: str, key: str | None = None, value: Any = None) -> BadAnswer:
        """The error for a field (or this value) that is not `expected`."""
        field = f"{self.path}.{key}" if key and self.path else (key or self.path)
        what = f'"{field}" as {expected}' if field else expected
        return BadAnswer(self.url, what, _kind(value))

    def _object(self) -> dict[str, Any]:
        if not isinstance(self.value, dict):
            raise self.fail("a JSON object", value=self.value)
        return self.value

    def get(self, key: str) -> Any:
        return self._object().get(key)

    def text(self, key: str) -> str:
        """A string the answer must hold."""
        value = self.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail("a string", key, value)
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail("a string", key, value)
        return value or None

    def texts(self, key: str) -> tuple[str, ...]:
        """A list of strings; absent is empty."""
        value = self.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail("a list of strings", key, value)
        return tuple(value)

    def objects(self, key: str) -> list[Answer]:
        """A list of objects; absent is empty."""
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail("a list of objects", key, value)
        found = [self.child(f"{key}[{i}]", v) for i, v in enumerate(value)]
        for item in found:
            item._object()
        return found

    def object(self, key: str) -> Answer | None:
        value = self.get(key)
        if value is None:
            return None
        item = self.child(key, value)
        item._object()
        return item

    def child(self, key: str, value: Any) -> Answer:
        return Answer(self.url, value, f"{self.path}.{key}" if self.path else key)

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail("true or false", key, value)
        return value

    def time(self, key: str) -> datetime:
        text = self.text(key)
        try:
            found = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise self.fail("an RFC 3339 time", key, text) from None
        return found if found.tzinfo else found.replace(tzinfo=UTC)

    def problem(self, key: str) -> AcmeProblem | None:
        """An RFC 7807 problem the CA put in a field (an order's or challenge's `error`)."""
        value = self.get(key)
        return AcmeProblem.from_json(value) if isinstance(value, dict) else None


def directory_of(answer: Answer) -> dict[str, Any]:
    """The directory, its resource URLs checked: the three every flow needs must be there;
    the others (revokeCert, keyChange, renewalInfo) are checked where they are used."""
    for key in ("newNonce", "newAccount", "newOrder"):
        answer.text(key)
    for key in ("revokeCert", "keyChange", "renewalInfo"):
        answer.optional_text(key)
    answer.object("meta")
    return dict(answer.value)


def account_of(answer: Answer, location: str) -> AccountInfo:
    contacts = answer.texts("contact")
    return AccountInfo(
        uri=location,
        status=answer.optional_text("status") or "valid",
        contacts=contacts,
    )


def order_of(answer: Answer, location: str, retry_after: float | None) -> OrderInfo:
    return OrderInfo(
        url=location,
        status=answer.text("status"),
        authorizations=answer.texts("authorizations"),
        finalize=answer.text("finalize"),
        certificate=answer.optional_text("certificate"),
        error=answer.problem("error"),
        retry_after=retry_after,
        identifiers=tuple(i.text("value") for i in answer.objects("identifiers")),
    )


def authorization_of(answer: Answer, url: str, retry_after: float | None) -> AuthorizationInfo:
    challenges = tuple(
        ChallengeInfo(
            type=ch.text("type"),
            url=ch.text("url"),
            token=ch.optional_text("token") or "",
            status=ch.text("status"),
            error=ch.problem("error"),
        )
        for ch in answer.objects("challenges")
    )
    identifier = answer.object("identifier")
    if identifier is None:
        raise answer.fail("an object", "identifier")
    name = identifier.text("value")
    wildcard = answer.flag("wildcard")
    return AuthorizationInfo(
        url=url,
        identifier=f"*.{name}" if wildcard else name,
        wildcard=wildcard,
        status=answer.text("status"),
        challenges=challenges,
        retry_after=retry_after,
    )


def renewal_info_of(answer: Answer, retry_after: float | None) -> RenewalInfo:
    window = answer.object("suggestedWindow")
    if window is None:
        raise answer.fail("an object", "suggestedWindow")
    return RenewalInfo(
        start=window.time("start"),
        end=window.time("end"),
        retry_after=retry_after,
        explanation_url=answer.optional_text("explanationURL"),
    )


def order_urls(answer: Answer) -> list[str]:
    """One page of an account's orders: RFC 8555's `{"orders": [...]}`, or step-ca's bare
    list of URLs."""
    if isinstance(answer.value, list):
        if not all(isinstance(u, str) for u in answer.value):
            raise answer.fail("a list of order URLs", value=answer.value)
        return list(answer.value)
    return list(answer.texts("orders"))
