"""Renewal planning, in one place: when a certificate that just arrived is renewed, how
the CA's ARI window moves that, and which certificate a renewal order replaces. The
moments themselves are pure functions in domain/renewal.py (and, for a failing
certificate's next try, domain/retry.py); this module asks the CA and applies the
policy settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509

from certbroker.crypto.ari import ari_cert_id
from certbroker.domain.errors import CAError
from certbroker.domain.models import Certificate, Order, OrderPurpose
from certbroker.domain.renewal import (
    RenewalPlan,
    RenewalReason,
    RenewalWindow,
    ari_guard,
    plan_renewal,
)
from certbroker.ports import CertificateAuthority

log = logging.getLogger("certbroker.scheduler")

ARI_DEFAULT_RETRY = timedelta(hours=6)  # when the CA sends no Retry-After (RFC 9773 §4.3)
ARI_LONGEST_RETRY = timedelta(days=1)
ARI_RETRY_AFTER_ERROR = timedelta(hours=1)


class RenewalPlanner:
    def __init__(
        self,
        renew_before_days: float | None = None,
        stored: Callable[[], float | None] | None = None,
    ) -> None:
        self.configured_days = renew_before_days  # the global policy; None: 1/3 of lifetime
        self.stored = stored  # the console's setting, which comes first when set

    @property
    def renew_before_days(self) -> float | None:
        days = self.stored() if self.stored is not None else None
        return days if days is not None else self.configured_days

    def ask_window(
        self, ca: CertificateAuthority, leaf: x509.Certificate, now: datetime
    ) -> tuple[RenewalWindow | None, datetime | None]:
        """The CA's ARI window for `leaf` and when to ask again, or (None, None) when the
        CA offers no ARI. A CA that fails to answer is asked again in an hour; the
        policy plans the renewal meanwhile."""
        if not ca.supports_renewal_info():
            return None, None
        try:
            info = ca.renewal_info(ari_cert_id(leaf))
        except (CAError, ValueError) as exc:
            log.warning("no renewal information from the CA: %s", exc)
            return None, now + ARI_RETRY_AFTER_ERROR
        wait = info.retry_after if info.retry_after else ARI_DEFAULT_RETRY.total_seconds()
        wait = min(max(wait, 60.0), ARI_LONGEST_RETRY.total_seconds())
        return RenewalWindow(info.start, info.end), now + timedelta(seconds=wait)

    def plan(
        self,
        cert: Certificate,
        order: Order,
        not_before: datetime,
        not_after: datetime,
        window: RenewalWindow | None,
        now: datetime,
    ) -> RenewalPlan:
        """When to renew the certificate `order` just obtained for `cert` (as it was
        before), valid from `not_before` to `not_after`. One that a renewal the CA's
        window asked for obtained is safe from the window for `ari_guard`."""
        after_ari = (
            order.purpose is OrderPurpose.RENEW
            and cert.renewal_reason in (RenewalReason.ARI, RenewalReason.ARI_PAST)
            and cert.renew_at is not None
            and cert.renew_at <= order.created_at
        )
        guard = now + ari_guard(not_before, not_after) if after_ari else None
        return self._plan(cert, not_before, not_after, window, now, guard)

    def _plan(
        self,
        cert: Certificate,
        not_before: datetime,
        not_after: datetime,
        window: RenewalWindow | None,
        now: datetime,
        ari_not_before: datetime | None,
    ) -> RenewalPlan:
        return plan_renewal(
            not_before,
            not_after,
            now=now,
            days_before_expiry=cert.renew_before_days or self.renew_before_days,
            ari=window,
            ari_not_before=ari_not_before,
        )

    def replan(self, cert: Certificate, window: RenewalWindow | None, now: datetime) -> RenewalPlan:
        """The plan of a certificate in use, after the CA was asked for its window again:
        a moment already drawn inside the same window is kept rather than drawn again,
        and a guarded one stays guarded."""
        assert cert.not_before is not None and cert.not_after is not None
        guarded = cert.renewal_reason is RenewalReason.ARI_GUARDED
        guard = cert.renew_at if guarded else None
        plan = self._plan(cert, cert.not_before, cert.not_after, window, now, guard)
        kept = cert.renew_at if cert.renewal_reason is RenewalReason.ARI else None
        if window is not None and kept is not None and window.start <= kept <= window.end:
            return RenewalPlan(kept, RenewalReason.ARI)
        return plan

    def replaces(self, ca: CertificateAuthority, cert: Certificate, order: Order) -> str | None:
        """For a renewal at a CA with ARI: the certificate it replaces (RFC 9773 §5)."""
        if order.purpose is not OrderPurpose.RENEW or cert.cert_pem is None:
            return None
        if not ca.supports_renewal_info():
            return None
        try:
            return ari_cert_id(x509.load_pem_x509_certificate(cert.cert_pem.encode()))
        except ValueError as exc:
            log.info("order %d: not naming the replaced certificate: %s", order.id, exc)
            return None
