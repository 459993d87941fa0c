"""Gateway agents in the store: which agents are connected, which tokens they hold, what
they installed. Nothing of it lives only in a process, so an agent may be connected to
any node and an order run by any other."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.agents import Installation, KeyMode
from certbroker.domain.clients import Client
from certbroker.domain.models import Certificate, CertificateStatus, ChallengeType, EventKind
from certbroker.store.base import StoreBase
from certbroker.store.clients import client_row
from certbroker.store.events import add_event
from certbroker.store.rows import CERT_COLUMNS, certificate_row
from certbroker.store.schema import (
    certificates,
    challenge_acks,
    challenges,
    clients,
    events,
    installations,
)


def _installation(row: Row[Any]) -> Installation:
    return Installation(
        client_id=row.client_id,
        certificate_id=row.certificate_id,
        key_mode=KeyMode(row.key_mode),
        serial=row.serial,
        not_after=row.not_after,
        installed_at=row.installed_at,
        reload_status=row.reload_status,
        output_tail=row.output_tail,
        error=row.error,
        alarm_since=row.alarm_since,
        reported_at=row.reported_at,
    )


class AgentStore(StoreBase):
    # -- who is connected -------------------------------------------------------------------

    def touch_agents(self, client_ids: Sequence[int], now: datetime) -> None:
        """These clients' agents are connected now (to this node)."""
        if client_ids:
            with self._write() as conn:
                conn.execute(
                    update(clients).where(clients.c.id.in_(client_ids)).values(agent_at=now)
                )

    def live_agents(self, since: datetime) -> list[Client]:
        """Enabled clients with an agent connected to some node since `since`."""
        c = clients.c
        with self._read() as conn:
            rows = conn.execute(
                select(clients).where(and_(c.agent_at >= since, c.enabled.is_(True)))
            )
            return [client_row(r) for r in rows]

    # -- tokens at the edge -----------------------------------------------------------------

    def agent_challenges(self) -> list[tuple[str, str, str]]:
        """(token, key authorization, name) of every agent-answered challenge out now."""
        c = challenges.c
        with self._read() as conn:
            rows = conn.execute(
                select(c.token, c.key_authorization, c.identifier).where(
                    c.type == ChallengeType.AGENT_HTTP_01.value
                )
            )
            return [(r.token, r.key_authorization, r.identifier) for r in rows]

    def ack_challenges(self, client_id: int, tokens: Iterable[str], now: datetime) -> None:
        """The client's agent answers these tokens now (known ones only). Two gateways
        of one client may ack at once: the loser looks again."""
        for attempt in range(2):
            try:
                self._ack(client_id, list(tokens), now)
                return
            except IntegrityError:
                if attempt:
                    raise

    def _ack(self, client_id: int, tokens: list[str], now: datetime) -> None:
        a = challenge_acks.c
        with self._write() as conn:
            known = set(
                conn.execute(
                    select(challenges.c.token).where(challenges.c.token.in_(tokens))
                ).scalars()
            )
            done = set(
                conn.execute(
                    select(a.token).where(and_(a.client_id == client_id, a.token.in_(known)))
                ).scalars()
            )
            rows = [{"token": t, "client_id": client_id, "at": now} for t in known - done]
            if rows:
                conn.execute(insert(challenge_acks), rows)

    def acks_of(self, tokens: Sequence[str]) -> dict[str, set[int]]:
        """token -> the clients whose agents hold it."""
        found: dict[str, set[int]] = {t: set() for t in tokens}
        with self._read() as conn:
            for row in conn.execute(
                select(challenge_acks).where(challenge_acks.c.token.in_(list(tokens)))
            ):
                found[row.token].add(row.client_id)
        return found

    def forget_acks(self, tokens: Sequence[str]) -> None:
        with self._write() as conn:
            conn.execute(delete(challenge_acks).where(challenge_acks.c.token.in_(list(tokens))))

    def sweep_acks(self) -> int:
        """Acks of tokens that are gone (their order ended)."""
        with self._write() as conn:
            gone = ~challenge_acks.c.token.in_(select(challenges.c.token))
            return int(conn.execute(delete(challenge_acks).where(gone)).rowcount or 0)

    # -- what agents installed -------------------------------------------------------------

    def subscribe(self, client_id: int, cert_id: int, key_mode: KeyMode, now: datetime) -> None:
        """The client's agent installs this certificate (again a no-op)."""
        i = installations.c
        with self._write() as conn:
            found = conn.execute(
                select(i.id).where(and_(i.client_id == client_id, i.certificate_id == cert_id))
            ).first()
            if found is None:
                conn.execute(
                    insert(installations).values(
                        client_id=client_id,
                        certificate_id=cert_id,
                        key_mode=key_mode.value,
                        created_at=now,
                    )
                )

    def installations_of(self, client_id: int) -> list[Installation]:
        with self._read() as conn:
            rows = conn.execute(
                select(installations)
                .where(installations.c.client_id == client_id)
                .order_by(installations.c.certificate_id)
            )
            return [_installation(r) for r in rows]

    def installations_of_certificate(self, cert_id: int) -> list[Installation]:
        with self._read() as conn:
            rows = conn.execute(
                select(installations).where(installations.c.certificate_id == cert_id)
            )
            return [_installation(r) for r in rows]

    def installations_in_alarm(self) -> list[tuple[Installation, str]]:
        """(installation, its client's name) of every agent install with an alarm: a
        failed install, or drift; the oldest alarm first."""
        i = installations.c
        with self._read() as conn:
            rows = conn.execute(
                select(installations, clients.c.name.label("client_name"))
                .join(clients, clients.c.id == i.client_id)
                .where(i.alarm_since.is_not(None))
                .order_by(i.alarm_since, i.id)
            )
            return [(_installation(r), str(r.client_name)) for r in rows]

    def subscribers(self, cert_ids: Sequence[int]) -> dict[int, set[int]]:
        """certificate -> the clients whose agents install it."""
        found: dict[int, set[int]] = {}
        with self._read() as conn:
            for row in conn.execute(
                select(installations.c.certificate_id, installations.c.client_id).where(
                    installations.c.certificate_id.in_(list(cert_ids))
                )
            ):
                found.setdefault(row.certificate_id, set()).add(row.client_id)
        return found

    def report_installation(
        self,
        client: Client,
        cert_id: int,
        *,
        serial: str,
        not_after: datetime | None,
        ok: bool,
        reload_status: int | None,
        output_tail: str,
        error: str | None,
        now: datetime,
    ) -> None:
        """An agent's report: the serial it now serves, or why it put the previous files
        back (an alarm until an install succeeds). An event either way."""
        i = installations.c
        which = and_(i.client_id == client.id, i.certificate_id == cert_id)
        with self._write() as conn:
            row = conn.execute(select(installations).where(which)).first()
            if row is None:
                return
            values: dict[str, object] = {
                "reload_status": reload_status,
                "output_tail": output_tail[-2000:],
                "reported_at": now,
            }
            if ok:
                values |= {
                    "serial": serial,
                    "not_after": not_after,
                    "installed_at": now,
                    "error": None,
                    "alarm_since": None,
                }
                kind, message = EventKind.INSTALLED, f"installed by {client.name}: serial {serial}"
            else:
                values |= {"error": error, "alarm_since": row.alarm_since or now}
                kind = EventKind.INSTALL_FAILED
                message = f"{client.name} could not install serial {serial}: {error}"
            conn.execute(update(installations).where(which).values(values))
            add_event(conn, now, kind, message, cert_id=cert_id)

    def raise_drift(self, client_id: int, cert_id: int, message: str, now: datetime) -> None:
        i = installations.c
        which = and_(i.client_id == client_id, i.certificate_id == cert_id, i.alarm_since.is_(None))
        with self._write() as conn:
            if conn.execute(
                update(installations).where(which).values(alarm_since=now, error=message)
            ).rowcount:
                add_event(conn, now, EventKind.INSTALL_FAILED, message, cert_id=cert_id)

    # -- what changed since ---------------------------------------------------------------

    def last_event_id(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.max(events.c.id))).scalar() or 0)

    def issued_since(self, after: int) -> tuple[list[int], int]:
        """Certificates issued or renewed after event `after`, and the last event's ID."""
        kinds = (EventKind.ISSUED.value, EventKind.RENEWED.value)
        with self._read() as conn:
            rows = conn.execute(
                select(events.c.id, events.c.certificate_id, events.c.kind)
                .where(events.c.id > after)
                .order_by(events.c.id)
                .limit(5000)
            ).all()
        cert_ids = sorted({r.certificate_id for r in rows if r.kind in kinds and r.certificate_id})
        return cert_ids, (rows[-1].id if rows else after)

    def broker_certificate_for(self, names: Sequence[str]) -> Certificate | None:
        """The certificate for exactly these names (any order) whose key is held here,
        made for an agent, not revoked and not disabled, the newest: what an agent with
        `key = "broker"` installs (one certificate may go to many gateways, as in
        Parallels RAS). An operator's own certificates are never handed out this way:
        their keys stay where the operator put them."""
        c = certificates.c
        wanted = sorted(names)
        with self._read() as conn:
            rows = conn.execute(
                select(*CERT_COLUMNS).where(
                    and_(
                        c.key_sealed.is_not(None),
                        c.client_id.is_not(None),
                        c.status != CertificateStatus.REVOKED.value,
                        c.disabled.is_(False),
                        c.names.contains(json.dumps(wanted[0]), autoescape=True),
                    )
                )
            ).all()
        found = [certificate_row(r) for r in rows if sorted(json.loads(r.names)) == wanted]
        return max(found, key=lambda cert: cert.id, default=None)

    def drifting(self, now: datetime, within: timedelta) -> list[tuple[int, int, str, str]]:
        """(client, certificate, serial installed, current serial) of agents still on a
        replaced serial whose own expiry is `within` away, not yet alarmed."""
        i, c = installations.c, certificates.c
        with self._read() as conn:
            rows = conn.execute(
                select(i.client_id, i.certificate_id, i.serial, c.serial.label("current"))
                .join(certificates, c.id == i.certificate_id)
                .where(
                    and_(
                        i.serial.is_not(None),
                        c.serial.is_not(None),
                        i.serial != c.serial,
                        i.not_after <= now + within,
                        i.alarm_since.is_(None),
                    )
                )
            ).all()
        return [(r.client_id, r.certificate_id, r.serial, r.current) for r in rows]
