"""When to renew a certificate: pure functions, the clock and the randomness injected.

In order of precedence:

1. the CA's ARI window (RFC 9773), when it offers one: a random moment inside it;
2. otherwise the policy: N days before expiry (per certificate, else the global
   setting), but never more than half the lifetime ahead, so a 6-day certificate with
   a 30-day policy does not renew in a loop;
3. otherwise when one third of the lifetime is left (a 90-day certificate at 30 days,
   a 6-day one at 2 days).

Whatever the source, never later than the emergency point: 1/20 of the lifetime left.
A certificate that itself came from a renewal the CA's window asked for is not renewed
for the CA's window again before `ari_not_before` (1 % of its lifetime later,
`ari_guard`): a CA that answers a past window for every new certificate would otherwise
make it renew in a loop.
Policy and default moments are moved earlier by a random jitter (up to 2 % of the
lifetime, at most 12 hours), so a thousand certificates issued in the same minute do not
all renew in the same minute.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

EMERGENCY_FRACTION = 1 / 20
DEFAULT_FRACTION = 1 / 3
MAX_POLICY_FRACTION = 1 / 2
JITTER_FRACTION = 0.02
JITTER_MAX = timedelta(hours=12)
ARI_GUARD_FRACTION = 1 / 100

# A source of uniform floats in [0, 1): random.random, or a seeded Random's in tests.
Uniform = Callable[[], float]


class RenewalReason(StrEnum):
    ARI = "ari"  # inside the CA's suggested window
    ARI_PAST = "ari-past"  # the CA's window has already ended: renew now
    POLICY = "days-before-expiry"
    POLICY_CAPPED = "days-before-expiry-capped"  # more days than half the lifetime
    LIFETIME = "one-third-of-lifetime-left"
    EMERGENCY = "emergency"  # the others came too late
    ARI_GUARDED = "ari-guarded"  # the CA's window, held off: it asked again too soon
    RETRY_AFTER_FAILURE = "retry-after-failure"  # a renewal failed; the next try
    STOPPED = "stopped"  # a renewal failed for good; no renew_at until `cert renew`


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested window (ARI), as received."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class RenewalPlan:
    renew_at: datetime
    reason: RenewalReason

    def describe(self) -> str:
        return f"{self.renew_at:%Y-%m-%d %H:%M} UTC ({self.reason.value})"


def emergency_point(not_before: datetime, not_after: datetime) -> datetime:
    return not_after - (not_after - not_before) * EMERGENCY_FRACTION


def ari_guard(not_before: datetime, not_after: datetime) -> timedelta:
    """How long a certificate that came from an ARI renewal is safe from another."""
    return (not_after - not_before) * ARI_GUARD_FRACTION


def jitter(not_before: datetime, not_after: datetime, uniform: Uniform) -> timedelta:
    """How much earlier than planned: uniform in [0, min(2 % of the lifetime, 12 h))."""
    span = min((not_after - not_before) * JITTER_FRACTION, JITTER_MAX)
    return span * uniform()


def plan_renewal(
    not_before: datetime,
    not_after: datetime,
    *,
    now: datetime,
    days_before_expiry: float | None = None,
    ari: RenewalWindow | None = None,
    uniform: Uniform = random.random,
    ari_not_before: datetime | None = None,
) -> RenewalPlan:
    """When to renew the certificate valid from `not_before` to `not_after`.
    `ari_not_before`: the CA's window may not move renewal before this moment."""
    if not_after <= not_before:
        raise ValueError("a certificate's not_after must come after its not_before")
    lifetime = not_after - not_before
    latest = emergency_point(not_before, not_after)
    if ari is not None and ari.end > ari.start:
        if ari.end <= now:
            moment, reason = now, RenewalReason.ARI_PAST
        else:
            # RFC 9773 §4.2: a uniformly random moment in the window, not before now.
            start = max(ari.start, now)
            moment, reason = start + (ari.end - start) * uniform(), RenewalReason.ARI
        if ari_not_before is not None and moment < ari_not_before:
            moment, reason = ari_not_before, RenewalReason.ARI_GUARDED
        if moment > latest:
            return RenewalPlan(max(latest, now), RenewalReason.EMERGENCY)
        return RenewalPlan(moment, reason)
    if days_before_expiry is not None:
        lead = timedelta(days=days_before_expiry)
        reason = RenewalReason.POLICY
        if lead > lifetime * MAX_POLICY_FRACTION:
            lead, reason = lifetime * MAX_POLICY_FRACTION, RenewalReason.POLICY_CAPPED
    else:
        lead, reason = lifetime * DEFAULT_FRACTION, RenewalReason.LIFETIME
    moment = not_after - lead
    if moment > latest:
        return RenewalPlan(latest, RenewalReason.EMERGENCY)
    return RenewalPlan(moment - jitter(not_before, not_after, uniform), reason)
