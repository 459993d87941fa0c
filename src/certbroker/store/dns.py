"""DNS accounts, the zones they are the default for, and the TXT records certbroker wrote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.dns import DnsAccount, DnsRecord, zone_of
from certbroker.domain.errors import NotFoundError, UsageError
from certbroker.domain.models import ACTIVE_ORDER_STATES, EventKind, OrderPurpose, OrderState
from certbroker.store.base import StoreBase
from certbroker.store.events import add_event, raise_alarm
from certbroker.store.rows import new_id
from certbroker.store.schema import certificates, dns_accounts, dns_records, dns_zones, orders


def _record(row: Row[Any]) -> DnsRecord:
    return DnsRecord(
        id=row.id,
        order_id=row.order_id,
        identifier=row.identifier,
        name=row.name,
        value=row.value,
        dns_account_id=row.dns_account_id,
        written=bool(row.written),
    )


class DnsStore(StoreBase):
    # -- DNS accounts ----------------------------------------------------------------------

    def add_dns_account(
        self,
        *,
        name: str,
        provider: str,
        settings: dict[str, str],
        secret_names: Sequence[str],
        secrets_sealed: bytes,
        zones: Sequence[str],
        now: datetime,
    ) -> DnsAccount:
        """The account and its zones at once; nothing is stored when a zone is taken."""
        stored = {"settings": settings, "secret_names": sorted(secret_names)}
        try:
            with self._write() as conn:
                account_id = new_id(
                    conn.execute(
                        insert(dns_accounts).values(
                            name=name,
                            provider=provider,
                            settings=json.dumps(stored),
                            secrets_sealed=secrets_sealed,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                )
                self._claim_zones(conn, account_id, zones)
        except IntegrityError:
            raise UsageError(
                f"a DNS account named {name!r} already exists; choose another name, or "
                f"`certbroker dns delete {name}` first"
            ) from None
        return self.get_dns_account(account_id)

    def _claim_zones(self, conn: Connection, account_id: int, zones: Sequence[str]) -> None:
        for zone in zones:
            holder = conn.execute(
                select(dns_accounts.c.name)
                .join(dns_zones, dns_zones.c.dns_account_id == dns_accounts.c.id)
                .where(dns_zones.c.zone == zone)
            ).scalar_one_or_none()
            if holder is not None:
                raise UsageError(
                    f"zone {zone} already has a default DNS account ({holder!r}); remove it "
                    f"there with `certbroker dns zones {holder} --remove {zone}` first"
                )
            conn.execute(insert(dns_zones).values(zone=zone, dns_account_id=account_id))

    def set_dns_zones(self, account_id: int, add: Sequence[str], remove: Sequence[str]) -> None:
        with self._write() as conn:
            for zone in remove:
                conn.execute(
                    delete(dns_zones).where(
                        and_(dns_zones.c.zone == zone, dns_zones.c.dns_account_id == account_id)
                    )
                )
            self._claim_zones(conn, account_id, add)

    def _dns_account(self, conn: Connection, row: Row[Any]) -> DnsAccount:
        stored = json.loads(row.settings)
        zones = conn.execute(
            select(dns_zones.c.zone)
            .where(dns_zones.c.dns_account_id == row.id)
            .order_by(dns_zones.c.zone)
        ).scalars()
        return DnsAccount(
            id=row.id,
            name=row.name,
            provider=row.provider,
            settings=stored["settings"],
            secret_names=tuple(stored["secret_names"]),
            zones=tuple(zones),
            created_at=row.created_at,
        )

    def get_dns_account(self, ref: str | int) -> DnsAccount:
        """By ID (an int: what the store points at it with) or by name (a str: what people
        give), as clients, users and targets are; never a name taken for an ID. Digits
        were both: an account named "7" and another whose ID is 7 were both found, and
        whichever the database returned first was shown, deleted, or had its settings
        paired with the other's secrets; and once "7" was deleted, what named it reached
        account 7."""
        column = dns_accounts.c.id if isinstance(ref, int) else dns_accounts.c.name
        with self._read() as conn:
            row = conn.execute(select(dns_accounts).where(column == ref)).first()
            if row is None:
                raise NotFoundError(
                    f"no DNS account {ref!r}; see `certbroker dns list`, or add one with "
                    "`certbroker dns add`"
                )
            return self._dns_account(conn, row)

    def list_dns_accounts(self) -> list[DnsAccount]:
        with self._read() as conn:
            rows = conn.execute(select(dns_accounts).order_by(dns_accounts.c.name)).all()
            return [self._dns_account(conn, row) for row in rows]

    def dns_account_secrets_sealed(self, account_id: int) -> bytes:
        with self._read() as conn:
            return bytes(
                conn.execute(
                    select(dns_accounts.c.secrets_sealed).where(dns_accounts.c.id == account_id)
                ).scalar_one()
            )

    def dns_account_for(self, name: str) -> int | None:
        """The default DNS account of the longest zone `name` is in, or None."""
        with self._read() as conn:
            rows = conn.execute(select(dns_zones.c.zone, dns_zones.c.dns_account_id)).all()
        by_zone = {row.zone: int(row.dns_account_id) for row in rows}
        zone = zone_of(name, by_zone)
        return None if zone is None else by_zone[zone]

    def dns_account_users(self, account_id: int) -> tuple[int, int]:
        """(certificates that name it, its records not yet removed)."""
        with self._read() as conn:
            certs = conn.execute(
                select(func.count())
                .select_from(certificates)
                .where(certificates.c.dns_account_id == account_id)
            ).scalar_one()
            records = conn.execute(
                select(func.count())
                .select_from(dns_records)
                .where(dns_records.c.dns_account_id == account_id)
            ).scalar_one()
        return int(certs), int(records)

    def delete_dns_account(self, account_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(dns_zones).where(dns_zones.c.dns_account_id == account_id))
            conn.execute(delete(dns_accounts).where(dns_accounts.c.id == account_id))

    # -- TXT records -----------------------------------------------------------------------

    def add_dns_records(
        self, order_id: int, owner: str, items: Sequence[tuple[str, str, str, int | None]],
        now: datetime,
    ) -> list[DnsRecord]:  # fmt: skip
        """(identifier, name, value, DNS account) rows, stored before anything is written
        so that a crash right after writing still leaves a row to clean up. A record the
        order already has is kept, not added twice."""
        with self._write() as conn:
            self._check_lease(conn, order_id, owner)
            have = {
                (r.name, r.value)
                for r in conn.execute(
                    select(dns_records.c.name, dns_records.c.value).where(
                        dns_records.c.order_id == order_id
                    )
                )
            }
            for identifier, name, value, account_id in items:
                if (name, value) in have:
                    continue
                have.add((name, value))
                conn.execute(
                    insert(dns_records).values(
                        order_id=order_id,
                        identifier=identifier,
                        name=name,
                        value=value,
                        dns_account_id=account_id,
                        written=False,
                        created_at=now,
                    )
                )
        return self.dns_records_of(order_id)

    def dns_records_of(self, order_id: int) -> list[DnsRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(dns_records)
                .where(dns_records.c.order_id == order_id)
                .order_by(dns_records.c.id)
            ).all()
        return [_record(r) for r in rows]

    def mark_dns_record_written(self, record_id: int) -> None:
        with self._write() as conn:
            conn.execute(
                update(dns_records).where(dns_records.c.id == record_id).values(written=True)
            )

    def dns_records_to_remove(self, now: datetime, limit: int = 100) -> list[DnsRecord]:
        """Records of orders that ended (issued, failed or gone), due for removal."""
        active = select(orders.c.id).where(orders.c.state.in_(ACTIVE_ORDER_STATES))
        with self._read() as conn:
            rows = conn.execute(
                select(dns_records)
                .where(
                    and_(
                        dns_records.c.order_id.not_in(active),
                        or_(
                            dns_records.c.cleanup_after.is_(None),
                            dns_records.c.cleanup_after <= now,
                        ),
                    )
                )
                .order_by(dns_records.c.id)
                .limit(limit)
            ).all()
        return [_record(r) for r in rows]

    def forget_dns_record(self, record_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(dns_records).where(dns_records.c.id == record_id))

    def dns_cleanup_failed(self, record_id: int, error: str, retry_at: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                update(dns_records)
                .where(dns_records.c.id == record_id)
                .values(cleanup_error=error, cleanup_after=retry_at)
            )

    # -- manual mode ---------------------------------------------------------------------

    def await_person(
        self,
        order_id: int,
        owner: str,
        now: datetime,
        message: str,
        first: bool,
        expired: bool = False,
    ) -> None:
        """Manual DNS-01: the order waits (AWAITING_DNS) until `cert verify`; no worker
        takes it (claim_next skips WAITING_FOR_A_PERSON). `first`: the event that shows
        the records, and for a renewal (a certificate in use that will expire) the alarm.
        `expired`: the CA's order is gone; the event and the alarm say what to run."""
        values = {
            "state": OrderState.AWAITING_DNS.value,
            "error_message": message,
            "next_run_at": None,
            "lease_owner": None,
        }
        with self._write() as conn:
            self._update_held(conn, order_id, owner, now, None, values)
            if not (first or expired):
                return
            cert_id, purpose = conn.execute(
                select(orders.c.certificate_id, orders.c.purpose).where(orders.c.id == order_id)
            ).one()
            add_event(
                conn, now, EventKind.AWAITING_DNS, message, cert_id=cert_id, order_id=order_id
            )
            if expired or purpose == OrderPurpose.RENEW.value:
                since = conn.execute(
                    select(certificates.c.alarm_since).where(certificates.c.id == cert_id)
                ).scalar_one()
                what = "renewal" if purpose == OrderPurpose.RENEW.value else "issuance"
                raise_alarm(
                    conn, now, cert_id, order_id, f"{what} waits for a person: {message}",
                    already=since is not None, kind="awaiting-dns",
                )  # fmt: skip

    def restart_order(self, order_id: int, owner: str, now: datetime) -> None:
        """Start the order over at the CA (`cert verify --new-challenge`): a new order URL,
        new challenges; the records a person was shown are forgotten."""
        values = {"state": OrderState.QUEUED.value, "order_url": None, "error_message": None}
        with self._write() as conn:
            # Kept, so a worker looking for an order its dead holder made at the CA
            # (OrderRun._orphan) never takes this one back.
            conn.execute(
                update(orders)
                .where(and_(orders.c.id == order_id, orders.c.order_url.is_not(None)))
                .values(abandoned_url=orders.c.order_url)
            )
            self._update_held(conn, order_id, owner, now, now + timedelta(minutes=2), values)
            conn.execute(delete(dns_records).where(dns_records.c.order_id == order_id))
