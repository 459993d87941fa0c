"""When a failing certificate is tried again: pure functions, the clock and the
randomness injected.

Every certificate is driven towards valid until a person says otherwise (`cert
disable`): whatever failed, a new order is tried later, first issuance and renewal
alike. The first retry comes soon (the common cause is a restart or a blip), then the
pause grows, up to a ceiling; while the certificate in use is past its emergency point
it is never longer than an hour. A failure a retry cannot fix by itself (a CAA record,
a refused identifier, an account the CA no longer knows) waits the ceiling at once, and
is still tried again: the fix usually happens outside certbroker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

from certbroker.domain.errors import AcmeProblem

RETRY_STEPS = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
)  # then doubling
RETRY_CEILING = timedelta(hours=6)
RETRY_NEAR_EXPIRY = timedelta(hours=1)  # the longest pause past the emergency point
JITTER_FRACTION = 0.1  # a pause is up to this much shorter, so retries spread out

# ACME errors that no retry fixes until someone changes something (RFC 8555 6.7).
NEEDS_A_PERSON = frozenset(
    {
        "accountDoesNotExist",
        "badCSR",
        "badPublicKey",
        "badSignatureAlgorithm",
        "caa",
        "externalAccountRequired",
        "rejectedIdentifier",
        "unsupportedIdentifier",
        "userActionRequired",
    }
)


_ADVICE = {
    "caa": "a CAA record of the name forbids this CA: add one that allows it",
    "rejectedIdentifier": "the CA will not issue for this name: check it, or use another CA",
    "unsupportedIdentifier": "the CA does not issue for names of this kind",
    "badCSR": "the CA refused the request: request again with another --key-type",
    "badPublicKey": "the CA refused the key: request again with another --key-type",
    "badSignatureAlgorithm": "the CA refused the key: request again with another --key-type",
    "accountDoesNotExist": "the CA forgot the account: `certbroker account recreate NAME`",
    "externalAccountRequired": (
        "the CA wants external account binding: register with --eab-kid and --eab-hmac-key"
    ),
    "userActionRequired": "the CA asks for something at its website (new terms?)",
}


def what_a_person_must_change(problem: AcmeProblem | None) -> str:
    """For a failure no retry fixes by itself: what must change, as far as known."""
    codes = [] if problem is None else [problem.code, *(p.code for p in problem.subproblems)]
    advice = [_ADVICE[c] for c in dict.fromkeys(codes) if c in _ADVICE]
    return "; ".join(advice) or "see the error above"


def heals_by_itself(problem: AcmeProblem | None, transient: bool) -> bool:
    """Whether the cause may go away without anyone acting: network trouble, the CA's own
    errors, a validation that met a restart. A permanent error with no problem document
    (a deactivated account, a DNS provider refusing the credentials) needs a person."""
    if transient:
        return True
    if problem is None:
        return False
    codes = {problem.code, *(p.code for p in problem.subproblems)}
    return not codes & NEEDS_A_PERSON


def retry_pause(failures: int) -> timedelta:
    """The pause after the `failures`-th failure in a row (1: the first)."""
    if failures <= len(RETRY_STEPS):
        return RETRY_STEPS[max(failures, 1) - 1]
    doublings = min(failures - len(RETRY_STEPS), 16)
    pause: timedelta = RETRY_STEPS[-1] * (2**doublings)
    return min(RETRY_CEILING, pause)


def next_try(
    failures: int,
    now: datetime,
    *,
    heals: bool,
    emergency: datetime | None = None,
    uniform: Callable[[], float] = random.random,
) -> datetime:
    """When to try again after `failures` failures in a row. `emergency`: the emergency
    point of the certificate in use (None: none in use)."""
    pause = retry_pause(failures) if heals else RETRY_CEILING
    if emergency is not None and now >= emergency:
        pause = min(pause, RETRY_NEAR_EXPIRY)
    return now + pause * (1 - JITTER_FRACTION * uniform())
