"""Pages of certificates for the API and the console: filters, sorting, keyset cursors.

A page after a cursor is found through the sort column's index whatever its depth: no
OFFSET, so page 1,000 of 100,000 certificates costs what page 1 does (docs/benchmarks.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select

from certbroker.domain.listing import PageQuery
from certbroker.domain.models import Certificate, CertificateStatus
from certbroker.store.base import StoreBase
from certbroker.store.rows import CERT_COLUMNS, certificate_row
from certbroker.store.schema import NAME_KEY, certificates, challenges

SORT_COLUMNS = {  # domain/listing.py SORTS
    "id": certificates.c.id,
    "expires": certificates.c.not_after,
    "name": NAME_KEY,  # the start of the names, as its index holds it
    "created": certificates.c.created_at,
}


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _status_filter(query: PageQuery, now: datetime) -> list[ColumnElement[bool]]:
    c = certificates.c
    found: list[ColumnElement[bool]] = []
    valid = c.status == CertificateStatus.VALID.value
    if query.status is CertificateStatus.EXPIRED:
        found.append(and_(valid, c.not_after <= now))
    elif query.status is CertificateStatus.VALID:
        found.append(and_(valid, c.not_after > now))
    elif query.status is not None:
        found.append(c.status == query.status.value)
    if query.expiring_within is not None:
        found.append(and_(valid, c.not_after <= now + query.expiring_within))
    return found


def _after(query: PageQuery) -> ColumnElement[bool] | None:
    """Rows after the cursor in the page order (NULLs last going up, first going down).

    A range of the sort column's index, `col >= v AND (col > v OR id > last)`: SQLite
    answers the equivalent `col > v OR (col = v AND id > last)` by scanning the index from
    its start, so a deep page cost more the deeper it was. Going up, the NULLs that follow
    the last non-NULL value come from a second query (page_of_certificates)."""
    if query.after is None:
        return None
    value, last_id = query.after
    col = SORT_COLUMNS[query.sort]
    ident = certificates.c.id
    if query.sort == "id":
        return ident < last_id if query.descending else ident > last_id
    if not query.descending:
        if value is None:
            return and_(col.is_(None), ident > last_id)
        return and_(col >= value, or_(col > value, ident > last_id))
    if value is None:
        return or_(and_(col.is_(None), ident < last_id), col.is_not(None))
    return and_(col <= value, or_(col < value, ident < last_id))


class ListingStore(StoreBase):
    def page_of_certificates(
        self, query: PageQuery, now: datetime, limit: int
    ) -> list[Certificate]:
        c = certificates.c
        where = _status_filter(query, now)
        if query.search:
            pattern = _like(query.search.lower())
            where.append(
                or_(
                    c.names.like(pattern, escape="\\"),
                    func.lower(func.coalesce(c.label, literal(""))).like(pattern, escape="\\"),
                )
            )
        if query.name_hints:
            where.append(
                or_(*(c.names.like(_like(h + '"'), escape="\\") for h in query.name_hints))
            )
        after = _after(query)
        if after is not None:
            where.append(after)
        col = SORT_COLUMNS[query.sort]
        if query.sort == "id":
            order = [c.id.desc() if query.descending else c.id.asc()]
        elif query.descending:
            order = [col.desc().nulls_first(), c.id.desc()]
        else:
            order = [col.asc().nulls_last(), c.id.asc()]
        statement = select(*CERT_COLUMNS).where(*where).order_by(*order).limit(limit)
        with self._read() as conn:
            found = [certificate_row(r) for r in conn.execute(statement)]
            if (
                after is not None
                and getattr(col, "nullable", False)
                and not query.descending
                and query.after is not None
                and query.after[0] is not None
                and len(found) < limit
            ):  # going up past the last value: the NULLs (see _after)
                where[-1] = col.is_(None)
                statement = (
                    select(*CERT_COLUMNS)
                    .where(*where)
                    .order_by(c.id.asc())
                    .limit(limit - len(found))
                )
                found += [certificate_row(r) for r in conn.execute(statement)]
        return found

    def count_certificates_by_status(self, now: datetime) -> dict[str, int]:
        """How many certificates are in each status, expired ones apart from valid."""
        c = certificates.c
        valid = CertificateStatus.VALID.value
        # Two reads of the (status, not_after) index: a GROUP BY of status alone walks it
        # in order, where grouping by "expired" too needed a sort of every row.
        with self._read() as conn:
            rows = conn.execute(select(c.status, func.count()).group_by(c.status)).all()
            expired = conn.execute(
                select(func.count()).where(and_(c.status == valid, c.not_after <= now))
            ).scalar_one()
        counts = {s.value: 0 for s in CertificateStatus}
        for status, count in rows:
            counts[status] = counts.get(status, 0) + int(count)
        counts[valid] -= int(expired)
        counts[CertificateStatus.EXPIRED.value] += int(expired)
        return counts

    def count_expiring(self, now: datetime, within: timedelta) -> int:
        c = certificates.c
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        and_(
                            c.status == CertificateStatus.VALID.value,
                            c.not_after > now,
                            c.not_after <= now + within,
                        )
                    )
                ).scalar_one()
            )

    def challenges_of(self, order_id: int) -> list[dict[str, Any]]:
        """The challenges an order is answering now (gone once the order is done)."""
        ch = challenges.c
        with self._read() as conn:
            rows = conn.execute(
                select(ch.identifier, ch.type, ch.created_at)
                .where(ch.order_id == order_id)
                .order_by(ch.identifier)
            ).all()
        return [
            {"name": r.identifier, "type": r.type, "since": r.created_at.isoformat()} for r in rows
        ]

    def distinct_chains(self) -> list[str]:
        """Every intermediate chain the broker's certificates carry, once each."""
        c = certificates.c
        with self._read() as conn:
            rows = conn.execute(
                select(c.chain_pem).where(c.chain_pem.is_not(None)).distinct()
            ).scalars()
            return [str(r) for r in rows if r]
