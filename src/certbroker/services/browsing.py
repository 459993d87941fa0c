"""What the API and console show of many certificates at once: pages with filters,
sorting and keyset cursors, the dashboard, and the live progress of an order."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from certbroker.domain.access import names_allowed
from certbroker.domain.errors import NotFoundError, UsageError
from certbroker.domain.listing import NAME_KEY_LENGTH, SORTS, PageQuery
from certbroker.domain.models import Certificate, CertificateStatus
from certbroker.services.certificates import acknowledgement
from certbroker.services.common import ServiceContext
from certbroker.store.space import Episode

MAX_PAGE = 500
TIMELINE_DAYS = 90


@dataclass(frozen=True)
class Page:
    items: list[Certificate]
    next: str | None  # the cursor of the next page; None on the last


def _sort_value(cert: Certificate, sort: str) -> Any:
    if sort == "expires":
        return cert.not_after
    if sort == "name":
        return json.dumps(list(cert.names))[:NAME_KEY_LENGTH]  # what the store sorts by
    if sort == "created":
        return cert.created_at
    return cert.id


def _encode(sort: str, descending: bool, cert: Certificate) -> str:
    value = _sort_value(cert, sort)
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([sort, descending, value, cert.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str, sort: str, descending: bool) -> tuple[Any, int]:
    wrong = UsageError("cursor: not one this API gave out; start again without it")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, desc, value, last_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise wrong from None
    if kind != sort or desc != descending:
        raise UsageError("cursor: it belongs to another sort order; start again without it")
    if not isinstance(last_id, int):
        raise wrong
    if sort in ("expires", "created") and value is not None:
        try:
            value = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise wrong from None
    return value, last_id


def parse_sort(sort: str) -> tuple[str, bool]:
    """`expires` or `-expires` (newest first) -> ("expires", descending)."""
    descending = sort.startswith("-")
    key = sort.removeprefix("-")
    if key not in SORTS:
        choices = ", ".join(f"{s}, -{s}" for s in SORTS)
        raise UsageError(f"sort: unknown order {sort!r}; choose one of {choices}")
    return key, descending


class Browsing:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    def page(
        self,
        *,
        limit_to: Sequence[str] = (),
        status: CertificateStatus | None = None,
        search: str | None = None,
        expiring_within_days: int | None = None,
        sort: str = "id",
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """One page of certificates; `limit_to`: the name patterns of a name-limited
        caller, who sees only certificates whose names all match."""
        key, descending = parse_sort(sort)
        if not 1 <= limit <= MAX_PAGE:
            raise UsageError(f"limit: from 1 to {MAX_PAGE}")
        if expiring_within_days is not None and expiring_within_days < 0:
            raise UsageError("expiring_within: a number of days, 0 or more")
        search = (search or "").strip() or None
        if search is not None and len(search) > 253:
            raise UsageError("search: at most 253 characters")
        query = PageQuery(
            status=status,
            search=search.lower() if search else None,
            expiring_within=(
                None if expiring_within_days is None else timedelta(days=expiring_within_days)
            ),
            sort=key,
            descending=descending,
            after=_decode(cursor, key, descending) if cursor else None,
            name_hints=[p.removeprefix("*") for p in limit_to],
        )
        now = self.ctx.clock()
        found: list[Certificate] = []
        while True:
            batch = self.repo.page_of_certificates(query, now, limit + 1)
            scanned, more = batch[:limit], len(batch) > limit
            for i, cert in enumerate(scanned):
                if not names_allowed(limit_to, cert.names):
                    continue
                found.append(cert)
                if len(found) == limit:
                    # A next page may turn out empty for a name-limited caller.
                    has_next = more or i < len(scanned) - 1
                    return Page(found, _encode(key, descending, cert) if has_next else None)
            if not more:
                return Page(found, None)
            last = scanned[-1]
            query = replace(query, after=(_sort_value(last, key), last.id))

    def dashboard(self) -> dict[str, Any]:
        """Counts by status, what expires within 7 and 30 days, active alarms, the
        expiry dates of the next 90 days, and the latest events."""
        now = self.ctx.clock()
        timeline = self.repo.page_of_certificates(
            PageQuery(
                status=CertificateStatus.VALID,
                expiring_within=timedelta(days=TIMELINE_DAYS),
                sort="expires",
            ),
            now,
            500,
        )
        return {
            "counts": self.repo.count_certificates_by_status(now),
            "expiring_7_days": self.repo.count_expiring(now, timedelta(days=7)),
            "expiring_30_days": self.repo.count_expiring(now, timedelta(days=30)),
            "alarms": len(self.alarms()),
            "timeline": [
                {
                    "id": c.id,
                    "name": c.label or c.common_name,
                    "not_after": c.not_after.isoformat() if c.not_after else None,
                    "days_left": c.days_left(now),
                }
                for c in timeline
            ],
            "timeline_days": TIMELINE_DAYS,
            "recent_events": [e.to_json() for e in self.repo.list_events(limit=10)],
        }

    def alarms(self) -> list[dict[str, Any]]:
        """Every alarm raised now, the oldest first, one row each, whatever raised it
        (`kind`): a certificate whose issuance or renewal keeps failing (`certificate`),
        a push target that keeps failing (`deployment`, with its `target`), an agent
        that could not install (`install-failed`) or still serves a replaced serial
        (`drift`), both with their `client`. What `certbroker alarms`, the console's
        alarms page and dashboard and the API show. And, while this process's writes are
        refused for lack of space, the store's own (`store-full`, no certificate): it
        cannot be written into the full store, so it lives in the process until a write
        succeeds again, and then the `store-full` event records it."""
        found: list[dict[str, Any]] = []
        self.repo.space.settle()  # room again? (a probe, while writes are being refused)
        full = self.repo.space.full
        if full is not None:
            found.append(_store_full_alarm(self.repo.space.where, self.repo.space.advice, full))
        for cert in self.repo.certificates_in_alarm():
            found.append(
                _alarm(
                    "certificate",
                    cert,
                    cert.alarm_since,
                    cert.alarm_message,
                    next_try_at=cert.next_try_at,
                    serial=cert.serial,
                )
                | {"acknowledged": acknowledgement(cert)}
            )
        certs: dict[int, Certificate | None] = {}

        def cert_of(cert_id: int) -> Certificate | None:
            if cert_id not in certs:
                try:
                    certs[cert_id] = self.repo.get_certificate(cert_id)
                except NotFoundError:
                    certs[cert_id] = None
            return certs[cert_id]

        for d in self.repo.failing_deployments():
            of = cert_of(d.certificate_id)
            if of is not None:
                found.append(
                    _alarm(
                        "deployment",
                        of,
                        d.alarm_since,
                        d.last_error,
                        next_try_at=d.next_try_at,
                        serial=d.serial,
                    )
                    | {"target": d.target_name, "deployment_id": d.id, "attempts": d.attempts}
                )
        for inst, client in self.repo.installations_in_alarm():
            of = cert_of(inst.certificate_id)
            if of is not None:
                kind = "drift" if (inst.error or "").startswith("drift:") else "install-failed"
                found.append(  # `serial`: what it should serve; `installed_serial`: what it does
                    _alarm(kind, of, inst.alarm_since, inst.error, serial=of.serial)
                    | {
                        "client": client,
                        "client_id": inst.client_id,
                        "installed_serial": inst.serial,
                    }
                )
        found.sort(key=lambda a: a["since"] or "")
        return found

    def visible_ids(self, limit_to: Sequence[str], ids: set[int | None]) -> set[int]:
        """Which of these certificates a caller limited to `limit_to` may see."""
        found = set()
        for cert_id in ids:
            if cert_id is None:
                continue
            try:
                cert = self.repo.get_certificate(cert_id)
            except NotFoundError:
                continue
            if names_allowed(limit_to, cert.names):
                found.add(cert_id)
        return found

    def orders(self, cert_id: int) -> list[dict[str, Any]]:
        """Every order (attempt) of the certificate, oldest first."""
        self.repo.get_certificate(cert_id)  # an unknown ID is refused
        return [o.to_json() for o in self.repo.orders_of(cert_id)]

    def order(self, order_id: int) -> tuple[int, dict[str, Any]]:
        """(its certificate's ID, the order with the challenges it answers now)."""
        order = self.repo.get_order(order_id)
        data = order.to_json()
        data["certificate_id"] = order.certificate_id
        data["challenges"] = self.repo.challenges_of(order_id)
        data["dns_records"] = [r.to_json() for r in self.repo.dns_records_of(order_id)]
        return order.certificate_id, data

    def progress(self, cert_id: int) -> dict[str, Any]:
        """Where the certificate's order stands now: its state, each name's challenge,
        the TXT records of manual DNS-01, the last error."""
        cert = self.repo.get_certificate(cert_id)
        order = self.repo.active_order_of(cert_id)
        orders = [order] if order else self.repo.orders_of(cert_id)[-1:]
        last = orders[0] if orders else None
        return {
            "certificate_id": cert_id,
            "status": cert.effective_status(self.ctx.clock()).value,
            "order": last.to_json() if last else None,
            "active": order is not None,
            "challenges": self.repo.challenges_of(order.id) if order else [],
            "dns_records": [r.to_json() for r in self.repo.dns_records_of(order.id)]
            if order
            else [],
        }


def _store_full_alarm(where: str, advice: str, full: Episode) -> dict[str, Any]:
    return {
        "kind": "store-full",
        "certificate_id": None,
        "names": [],
        "since": full.since.isoformat(),
        "last_error": f"the store {where} is full ({full.reason}): {full.refused} write(s) "
        f"refused and rolled back so far, nothing stored before is lost; {advice}; the "
        "writes are tried again by themselves",
        "next_try_at": None,
        "serial": None,
        "disabled": False,
        "acknowledged": None,
        "target": None,
        "client": None,
        "store": where,
    }


def _alarm(
    kind: str,
    cert: Certificate,
    since: datetime | None,
    error: str | None,
    *,
    next_try_at: datetime | None = None,
    serial: str | None = None,
) -> dict[str, Any]:
    """The fields every kind of alarm has (the ones a kind lacks are None)."""
    return {
        "kind": kind,
        "certificate_id": cert.id,
        "names": list(cert.names),
        "since": since.isoformat() if since else None,
        "last_error": error,
        "next_try_at": next_try_at.isoformat() if next_try_at else None,
        "serial": serial,
        "disabled": cert.disabled,
        "acknowledged": None,
        "target": None,
        "client": None,
    }
