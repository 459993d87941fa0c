"""Push targets in the store: the targets, which certificate goes where, and deployments.

Deployments of a new certificate are queued in the transaction that stores it
(`queue_deployments`, called by `store_issued`), so a crash between the two cannot lose
one. A newer serial cancels what is still open for an older one on the same target.
A deployment is worked on under a lease, as orders are, so two processes never deploy
the same one at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from certbroker.domain.errors import LeaseLost, NotFoundError, UsageError
from certbroker.domain.models import EventKind
from certbroker.domain.targets import (
    OPEN_DEPLOYMENT_STATES,
    Deployment,
    DeploymentState,
    SshHost,
    Target,
    TargetFiles,
)
from certbroker.store.base import StoreBase
from certbroker.store.events import add_event
from certbroker.store.rows import new_id
from certbroker.store.schema import certificate_targets, certificates, deployments, targets

_D = deployments.c


def _target(row: Row[Any]) -> Target:
    verify = None
    if row.verify:
        host, _, port = str(row.verify).rpartition(":")
        verify = (host, int(port))
    return Target(
        id=row.id,
        name=row.name,
        kind=row.kind,
        path=row.path,
        files=TargetFiles.from_json(json.loads(row.files)),
        reload=row.reload,
        verify=verify,
        hosts=tuple(SshHost(u, h, int(p)) for u, h, p in json.loads(row.hosts)),
        enabled=bool(row.enabled),
        has_identity=row.identity_sealed is not None,
        has_pkcs12_password=row.pkcs12_password_sealed is not None,
        known_hosts=row.known_hosts,
        created_at=row.created_at,
    )


def _deployment(row: Row[Any], target_name: str = "") -> Deployment:
    return Deployment(
        id=row.id,
        certificate_id=row.certificate_id,
        target_id=row.target_id,
        serial=row.serial,
        state=DeploymentState(row.state),
        attempts=row.attempts,
        next_try_at=row.next_try_at,
        last_error=row.last_error,
        output_tail=row.output_tail,
        created_at=row.created_at,
        finished_at=row.finished_at,
        alarm_since=row.alarm_since,
        lease_owner=row.lease_owner,
        target_name=target_name,
    )


def _queue_one(
    conn: Connection, cert_id: int, target_id: int, serial: str, now: datetime
) -> int | None:
    """Queue `serial` for one target; open deployments of other serials are cancelled
    (their alarm carries over). An open one of the same serial is made due now instead.
    Returns the deployment's ID, or None when it is running right now."""
    open_rows = conn.execute(
        select(deployments).where(
            and_(
                _D.certificate_id == cert_id,
                _D.target_id == target_id,
                _D.state.in_(OPEN_DEPLOYMENT_STATES),
            )
        )
    ).all()
    alarm = min((r.alarm_since for r in open_rows if r.alarm_since), default=None)
    for row in open_rows:
        if row.serial == serial:
            if row.state == DeploymentState.RUNNING.value and row.lease_until > now:
                return None
            conn.execute(
                update(deployments)
                .where(_D.id == row.id)
                .values(
                    state=DeploymentState.QUEUED.value,
                    next_try_at=now,
                    attempts=0,  # a person asked: the backoff starts again
                    lease_owner=None,
                    lease_until=None,
                )
            )
            return int(row.id)
    stale = [r.id for r in open_rows]
    if stale:
        conn.execute(
            update(deployments)
            .where(_D.id.in_(stale))
            .values(
                state=DeploymentState.CANCELLED.value,
                finished_at=now,
                last_error=func.coalesce(_D.last_error, "") + f" [replaced by serial {serial}]",
                lease_owner=None,
                lease_until=None,
            )
        )
    return new_id(
        conn.execute(
            insert(deployments).values(
                certificate_id=cert_id,
                target_id=target_id,
                serial=serial,
                state=DeploymentState.QUEUED.value,
                attempts=0,
                next_try_at=now,
                created_at=now,
                alarm_since=alarm,
            )
        )
    )


def queue_deployments(conn: Connection, cert_id: int, serial: str, now: datetime) -> int:
    """In the caller's transaction (the one storing the certificate): a deployment of
    `serial` to each enabled target of the certificate. How many were queued."""
    target_ids = conn.execute(
        select(certificate_targets.c.target_id)
        .join(targets, targets.c.id == certificate_targets.c.target_id)
        .where(and_(certificate_targets.c.certificate_id == cert_id, targets.c.enabled.is_(True)))
        .order_by(certificate_targets.c.target_id)
    ).scalars()
    count = 0
    for target_id in list(target_ids):
        _queue_one(conn, cert_id, int(target_id), serial, now)
        count += 1
    return count


class TargetStore(StoreBase):
    # -- targets ---------------------------------------------------------------------------

    def add_target(
        self,
        *,
        name: str,
        kind: str,
        hosts: Sequence[SshHost],
        path: str,
        files: TargetFiles,
        reload: str | None,
        verify: tuple[str, int] | None,
        known_hosts: str | None,
        identity_sealed: bytes | None,
        pkcs12_password_sealed: bytes | None,
        now: datetime,
    ) -> Target:
        try:
            with self._write() as conn:
                target_id = new_id(
                    conn.execute(
                        insert(targets).values(
                            name=name,
                            kind=kind,
                            hosts=json.dumps([[h.user, h.host, h.port] for h in hosts]),
                            path=path,
                            files=json.dumps(files.to_json()),
                            reload=reload,
                            verify=f"{verify[0]}:{verify[1]}" if verify else None,
                            enabled=True,
                            known_hosts=known_hosts,
                            identity_sealed=identity_sealed,
                            pkcs12_password_sealed=pkcs12_password_sealed,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                )
        except IntegrityError:
            raise UsageError(
                f"a target named {name!r} already exists; choose another name, or "
                f"`certbroker target delete {name}` first"
            ) from None
        return self.get_target(target_id)

    def get_target(self, which: int | str) -> Target:
        query = select(targets).where(
            targets.c.id == which if isinstance(which, int) else targets.c.name == which
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFoundError(
                f"no target named {which!r}; `certbroker target list` shows them"
                if isinstance(which, str)
                else f"no target with ID {which}"
            )
        return _target(row)

    def list_targets(self) -> list[Target]:
        with self._read() as conn:
            return [_target(r) for r in conn.execute(select(targets).order_by(targets.c.name))]

    def target_secrets_sealed(self, target_id: int) -> tuple[bytes | None, bytes | None]:
        """(the SSH identity's private key, the PKCS#12 password), sealed."""
        with self._read() as conn:
            row = conn.execute(
                select(targets.c.identity_sealed, targets.c.pkcs12_password_sealed).where(
                    targets.c.id == target_id
                )
            ).one()
        return (
            None if row.identity_sealed is None else bytes(row.identity_sealed),
            None if row.pkcs12_password_sealed is None else bytes(row.pkcs12_password_sealed),
        )

    def delete_target(self, target_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(deployments).where(_D.target_id == target_id))
            conn.execute(
                delete(certificate_targets).where(certificate_targets.c.target_id == target_id)
            )
            conn.execute(delete(targets).where(targets.c.id == target_id))

    # -- which certificate goes where -----------------------------------------------------

    def attach_target(self, cert_id: int, target_id: int, now: datetime) -> int | None:
        """Link the certificate to the target and, when it is issued, queue its current
        serial there, in one transaction. The deployment's ID (None: not issued yet)."""
        with self._write() as conn:
            serial = conn.execute(
                select(certificates.c.serial).where(
                    and_(certificates.c.id == cert_id, certificates.c.cert_pem.is_not(None))
                )
            ).scalar_one_or_none()
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(certificate_targets).values(
                            certificate_id=cert_id, target_id=target_id, created_at=now
                        )
                    )
            except IntegrityError:
                raise UsageError(
                    f"certificate {cert_id} already goes to this target; "
                    "`certbroker deploy ID --target NAME` deploys it again now"
                ) from None
            if serial is None:
                return None
            return _queue_one(conn, cert_id, target_id, str(serial), now)

    def detach_target(self, cert_id: int, target_id: int, now: datetime) -> bool:
        """Unlink; what is still open for the pair is cancelled (its alarm with it)."""
        with self._write() as conn:
            gone = conn.execute(
                delete(certificate_targets).where(
                    and_(
                        certificate_targets.c.certificate_id == cert_id,
                        certificate_targets.c.target_id == target_id,
                    )
                )
            ).rowcount
            self._cancel(conn, cert_id, target_id, now, "the target was detached")
        return bool(gone)

    def targets_of(self, cert_id: int) -> list[Target]:
        with self._read() as conn:
            return [
                _target(r)
                for r in conn.execute(
                    select(targets)
                    .join(certificate_targets, certificate_targets.c.target_id == targets.c.id)
                    .where(certificate_targets.c.certificate_id == cert_id)
                    .order_by(targets.c.name)
                )
            ]

    def certificates_of_target(self, target_id: int) -> list[int]:
        with self._read() as conn:
            return [
                int(i)
                for i in conn.execute(
                    select(certificate_targets.c.certificate_id)
                    .where(certificate_targets.c.target_id == target_id)
                    .order_by(certificate_targets.c.certificate_id)
                ).scalars()
            ]

    # -- deployments -----------------------------------------------------------------------

    def queue_deployment(
        self, cert_id: int, target_id: int, serial: str, now: datetime
    ) -> int | None:
        """Deploy now: queued (or a failing one made due now, its backoff reset)."""
        with self._write() as conn:
            return _queue_one(conn, cert_id, target_id, serial, now)

    def _cancel(
        self, conn: Connection, cert_id: int, target_id: int, now: datetime, why: str
    ) -> int:
        count = conn.execute(
            update(deployments)
            .where(
                and_(
                    _D.certificate_id == cert_id,
                    _D.target_id == target_id,
                    _D.state.in_(OPEN_DEPLOYMENT_STATES),
                )
            )
            .values(
                state=DeploymentState.CANCELLED.value,
                finished_at=now,
                lease_owner=None,
                lease_until=None,
                alarm_since=None,
            )
        ).rowcount
        if count:
            name = conn.execute(
                select(targets.c.name).where(targets.c.id == target_id)
            ).scalar_one_or_none()
            add_event(
                conn,
                now,
                EventKind.DEPLOY_CANCELLED,
                f"deployment to target {name} cancelled: {why}",
                cert_id=cert_id,
            )
        return int(count)

    def cancel_deployments(self, cert_id: int, target_id: int, now: datetime) -> int:
        with self._write() as conn:
            return self._cancel(conn, cert_id, target_id, now, "a person cancelled it")

    def get_deployment(self, deployment_id: int) -> Deployment:
        with self._read() as conn:
            row = conn.execute(
                select(deployments, targets.c.name.label("target_name"))
                .join(targets, targets.c.id == _D.target_id)
                .where(_D.id == deployment_id)
            ).first()
        if row is None:
            raise NotFoundError(f"no deployment with ID {deployment_id}")
        return _deployment(row, row.target_name)

    def latest_deployments(self, cert_id: int) -> list[Deployment]:
        """The newest deployment of the certificate to each of its targets."""
        newest = (
            select(func.max(_D.id))
            .where(_D.certificate_id == cert_id)
            .group_by(_D.target_id)
            .scalar_subquery()
        )
        with self._read() as conn:
            return [
                _deployment(r, r.target_name)
                for r in conn.execute(
                    select(deployments, targets.c.name.label("target_name"))
                    .join(targets, targets.c.id == _D.target_id)
                    .where(_D.id.in_(newest))
                    .order_by(targets.c.name)
                )
            ]

    def failing_deployments(self) -> list[Deployment]:
        """Open deployments with an alarm: a target that keeps failing."""
        with self._read() as conn:
            return [
                _deployment(r, r.target_name)
                for r in conn.execute(
                    select(deployments, targets.c.name.label("target_name"))
                    .join(targets, targets.c.id == _D.target_id)
                    .where(and_(_D.alarm_since.is_not(None), _D.state.in_(OPEN_DEPLOYMENT_STATES)))
                    .order_by(_D.alarm_since, _D.id)
                )
            ]

    def _due(self, now: datetime) -> Any:
        return and_(
            or_(
                _D.state.in_((DeploymentState.QUEUED.value, DeploymentState.FAILED.value)),
                _D.state == DeploymentState.RUNNING.value,  # its holder's lease ran out
            ),
            or_(_D.next_try_at.is_(None), _D.next_try_at <= now),
            or_(_D.lease_owner.is_(None), _D.lease_until <= now),
        )

    def claim_next_deployment(self, owner: str, now: datetime, until: datetime) -> int | None:
        """Take the lease of the next due deployment, in one statement (see claim_next)."""
        return self._claim_next_due(
            deployments,
            self._due(now),
            {"state": DeploymentState.RUNNING.value, "lease_owner": owner, "lease_until": until},
        )

    def claim_deployment(
        self, deployment_id: int, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Take this deployment's lease (deploy --wait), whether due or not, if free."""
        with self._write() as conn:
            done = conn.execute(
                update(deployments)
                .where(
                    and_(
                        _D.id == deployment_id,
                        _D.state.in_(OPEN_DEPLOYMENT_STATES),
                        or_(_D.lease_owner.is_(None), _D.lease_until <= now),
                    )
                )
                .values(state=DeploymentState.RUNNING.value, lease_owner=owner, lease_until=until)
            ).rowcount
        return bool(done)

    def _held(self, conn: Connection, deployment_id: int, owner: str) -> Row[Any]:
        row = conn.execute(
            select(deployments, targets.c.name.label("target_name"))
            .join(targets, targets.c.id == _D.target_id)
            .where(_D.id == deployment_id)
        ).first()
        if row is None or row.lease_owner != owner:
            raise LeaseLost(f"deployment {deployment_id} is no longer held by {owner}")
        return row

    def finish_deployment(
        self, deployment_id: int, owner: str, now: datetime, message: str, output_tail: str
    ) -> None:
        """It worked: done, the alarm cleared, an event."""
        with self._write() as conn:
            row = self._held(conn, deployment_id, owner)
            conn.execute(
                update(deployments)
                .where(_D.id == deployment_id)
                .values(
                    state=DeploymentState.DONE.value,
                    attempts=row.attempts + 1,
                    lease_owner=None,
                    lease_until=None,
                    next_try_at=None,
                    last_error=None,
                    output_tail=output_tail,
                    finished_at=now,
                    alarm_since=None,
                )
            )
            if row.alarm_since is not None:
                minutes = max(1, round((now - row.alarm_since).total_seconds() / 60))
                message += f" (alarm cleared: it was failing for {minutes} min)"
            add_event(
                conn,
                now,
                EventKind.DEPLOYED,
                f"target {row.target_name}: {message}",
                cert_id=row.certificate_id,
            )

    def fail_deployment(
        self,
        deployment_id: int,
        owner: str,
        now: datetime,
        error: str,
        output_tail: str,
        next_try_at: datetime,
    ) -> None:
        """It failed: tried again at `next_try_at`, the alarm raised, an event."""
        with self._write() as conn:
            row = self._held(conn, deployment_id, owner)
            conn.execute(
                update(deployments)
                .where(_D.id == deployment_id)
                .values(
                    state=DeploymentState.FAILED.value,
                    attempts=row.attempts + 1,
                    lease_owner=None,
                    lease_until=None,
                    next_try_at=next_try_at,
                    last_error=error,
                    output_tail=output_tail,
                    alarm_since=row.alarm_since or now,
                )
            )
            add_event(
                conn,
                now,
                EventKind.DEPLOY_FAILED,
                f"target {row.target_name}: serial {row.serial} not deployed: {error} "
                f"(next try {next_try_at:%Y-%m-%d %H:%M:%S} UTC)",
                cert_id=row.certificate_id,
            )
