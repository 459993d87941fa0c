"""The renewal policy, branch by branch, with the clock and the randomness injected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certbroker.domain.renewal import (
    JITTER_MAX,
    RenewalReason,
    RenewalWindow,
    ari_guard,
    emergency_point,
    plan_renewal,
)

ISSUED = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def lowest() -> float:
    return 0.0


def highest() -> float:
    return 0.999999


def test_default_is_one_third_of_the_lifetime_left() -> None:
    for days in (6, 45, 90):
        not_after = ISSUED + days * DAY
        plan = plan_renewal(ISSUED, not_after, now=ISSUED, uniform=lowest)
        assert plan.reason is RenewalReason.LIFETIME
        assert plan.renew_at == not_after - days * DAY / 3


def test_policy_days_before_expiry() -> None:
    not_after = ISSUED + 90 * DAY
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, days_before_expiry=15, uniform=lowest)
    assert plan == plan.__class__(not_after - 15 * DAY, RenewalReason.POLICY)


def test_a_policy_longer_than_half_the_lifetime_is_capped() -> None:
    """30 days before expiry on a 6-day certificate would renew it in a loop."""
    not_after = ISSUED + 6 * DAY
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, days_before_expiry=30, uniform=lowest)
    assert plan.reason is RenewalReason.POLICY_CAPPED
    assert plan.renew_at == ISSUED + 3 * DAY


def test_a_policy_too_close_to_expiry_gives_way_to_the_emergency_point() -> None:
    not_after = ISSUED + 90 * DAY
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, days_before_expiry=1, uniform=highest)
    assert plan.reason is RenewalReason.EMERGENCY
    assert plan.renew_at == emergency_point(ISSUED, not_after) == not_after - 4.5 * DAY


def test_jitter_only_ever_moves_renewal_earlier_and_within_its_bound() -> None:
    not_after = ISSUED + 90 * DAY
    planned = not_after - 30 * DAY
    earliest = plan_renewal(ISSUED, not_after, now=ISSUED, uniform=highest).renew_at
    latest = plan_renewal(ISSUED, not_after, now=ISSUED, uniform=lowest).renew_at
    assert latest == planned
    assert planned - JITTER_MAX <= earliest < planned
    assert planned - earliest > JITTER_MAX * 0.99  # the whole range is used
    # A short lifetime gets a short jitter: 2 % of 6 days.
    short_after = ISSUED + 6 * DAY
    short = plan_renewal(ISSUED, short_after, now=ISSUED, uniform=highest)
    assert short_after - 2 * DAY - short.renew_at <= 6 * DAY * 0.02


def test_ari_picks_a_moment_inside_the_window() -> None:
    not_after = ISSUED + 90 * DAY
    window = RenewalWindow(ISSUED + 60 * DAY, ISSUED + 62 * DAY)
    for uniform, expected in ((lowest, window.start), (lambda: 0.5, ISSUED + 61 * DAY)):
        plan = plan_renewal(ISSUED, not_after, now=ISSUED, ari=window, uniform=uniform)
        assert plan.reason is RenewalReason.ARI
        assert plan.renew_at == expected
    # ARI wins over the policy, even when the policy would say otherwise.
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, ari=window, days_before_expiry=10)
    assert window.start <= plan.renew_at < window.end


def test_ari_window_partly_past_starts_now() -> None:
    not_after = ISSUED + 90 * DAY
    now = ISSUED + 61 * DAY
    window = RenewalWindow(ISSUED + 60 * DAY, ISSUED + 62 * DAY)
    plan = plan_renewal(ISSUED, not_after, now=now, ari=window, uniform=lowest)
    assert plan.renew_at == now and plan.reason is RenewalReason.ARI


def test_ari_window_in_the_past_means_renew_now() -> None:
    """A CA moves the window into the past to ask for renewal now (e.g. a revocation)."""
    not_after = ISSUED + 90 * DAY
    now = ISSUED + 10 * DAY
    window = RenewalWindow(ISSUED + 2 * DAY, ISSUED + 3 * DAY)
    plan = plan_renewal(ISSUED, not_after, now=now, ari=window)
    assert plan == plan.__class__(now, RenewalReason.ARI_PAST)


def test_ari_window_after_the_emergency_point_is_overruled() -> None:
    not_after = ISSUED + 90 * DAY
    window = RenewalWindow(not_after - DAY, not_after)
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, ari=window, uniform=lowest)
    assert plan.reason is RenewalReason.EMERGENCY
    assert plan.renew_at == emergency_point(ISSUED, not_after)


def test_an_empty_ari_window_is_ignored() -> None:
    not_after = ISSUED + 90 * DAY
    window = RenewalWindow(ISSUED + 60 * DAY, ISSUED + 60 * DAY)
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, ari=window, uniform=lowest)
    assert plan.reason is RenewalReason.LIFETIME


def test_nonsense_validity_is_refused() -> None:
    with pytest.raises(ValueError, match="not_after"):
        plan_renewal(ISSUED, ISSUED, now=ISSUED)


def test_validation_cap_counts_failures_of_the_last_hour_only() -> None:
    from certbroker.domain.limits import validation_allowed_at

    now = ISSUED
    minute = timedelta(minutes=1)
    assert validation_allowed_at([], now, cap=3) is None
    two = [now - 10 * minute, now - 5 * minute]
    assert validation_allowed_at(two, now, cap=3) is None
    three = [now - 50 * minute, *two]
    # Allowed again when the oldest of the three is an hour old.
    assert validation_allowed_at(three, now, cap=3) == now + 10 * minute
    old = [now - 61 * minute, now - 70 * minute]
    assert validation_allowed_at(old + two, now, cap=3) is None
    four = [now - 55 * minute, *three]
    assert validation_allowed_at(four, now, cap=3) == now + 10 * minute


def test_the_cas_window_cannot_renew_a_certificate_again_before_its_guard() -> None:
    """One that came from an ARI renewal is held off until `ari_not_before` however far in
    the past the CA puts the window (else a CA doing so for every certificate loops)."""
    not_after = ISSUED + 90 * DAY
    past = RenewalWindow(ISSUED - 2 * DAY, ISSUED - DAY)
    guard = ISSUED + ari_guard(ISSUED, not_after)
    assert guard == ISSUED + 0.9 * DAY  # 1 % of 90 days
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, ari=past, ari_not_before=guard)
    assert plan == plan.__class__(guard, RenewalReason.ARI_GUARDED)
    later = RenewalWindow(ISSUED + 60 * DAY, ISSUED + 61 * DAY)  # a window past the guard
    plan = plan_renewal(ISSUED, not_after, now=ISSUED, ari=later, ari_not_before=guard)
    assert plan.reason is RenewalReason.ARI and plan.renew_at >= later.start


def test_the_guard_never_pushes_renewal_past_the_emergency_point() -> None:
    not_after = ISSUED + 90 * DAY
    now = not_after - DAY
    past = RenewalWindow(now - 2 * DAY, now - DAY)
    plan = plan_renewal(ISSUED, not_after, now=now, ari=past, ari_not_before=not_after)
    assert plan.reason is RenewalReason.EMERGENCY
    assert plan.renew_at == max(emergency_point(ISSUED, not_after), now)
