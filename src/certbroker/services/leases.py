"""Leases: an order is worked on only by the worker holding its lease in the store.

The owner string is `node:pid:nonce:label`, so a lease whose holder is a dead process
on this node is taken over at once; any other lease only when it runs out (a node that
dies: after `lease()`, 120 s by default; its live workers renew theirs every quarter of
that). Every write of a step names its owner, so a worker that lost its lease stops
(LeaseLost). The node's name is the host name unless `node_name` says otherwise: nodes
must have names of their own (containers can share a host name and PID numbers).
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from certbroker.domain.models import Order
from certbroker.services.common import ServiceContext

_NODE = {"name": socket.gethostname()}
_LEASE = [timedelta(seconds=120)]


def configure(node_name: str = "", lease_seconds: float = 0) -> None:
    """This process's node name and lease length (settings `node_name`, `lease_seconds`;
    empty or 0: the host name, 120 s)."""
    _NODE["name"] = node_name or socket.gethostname()
    _LEASE[0] = timedelta(seconds=lease_seconds or 120)


def lease() -> timedelta:
    """How long a lease lasts unless renewed."""
    return _LEASE[0]


def make_owner(label: str = "") -> str:
    """A lease owner: host and PID (so a dead local holder can be recognised) and a nonce."""
    suffix = f":{label}" if label else ""
    return f"{_NODE['name']}:{os.getpid()}:{secrets.token_hex(4)}{suffix}"


def holder_is_dead(owner: str | None) -> bool:
    """True when `owner` is a process on this node that no longer runs."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != _NODE["name"] or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Leases:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    def claim(self, order_id: int, owner: str) -> bool:
        """Take the order's lease when it is free, expired, or held by a dead process."""
        return self.claim_from(order_id, owner, self.repo.get_order(order_id).lease_owner)

    def claim_from(self, order_id: int, owner: str, holder: str | None) -> bool:
        """`claim`, for a caller that has just seen the order's holder."""
        steal = holder if holder_is_dead(holder) else None
        now = self.ctx.clock()
        return self.repo.try_claim(order_id, owner, now, now + lease(), steal)

    def claim_next(self, owner: str, look_at: int = 32) -> Order | int | None:
        """The next due order for a worker: one whose lease is free or expired, taken in
        one statement; else one whose holder died on this host (taken over at once rather
        than when its lease runs out). The order, its ID, or None when nothing is due."""
        now = self.ctx.clock()
        order = self.repo.claim_next(owner, now, now + lease())
        if order is not None:
            return order
        for order_id, holder, until in self.repo.claimable_orders(now, look_at):
            held = holder is not None and until is not None and until > now
            if held and holder_is_dead(holder) and self.claim_from(order_id, owner, holder):
                return order_id
        return None
