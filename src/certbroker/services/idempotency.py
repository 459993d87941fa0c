"""Which request (caller and Idempotency-Key) the work under way is for, so the service
that does it can record that, in the same transaction, on the key (`work_done`): when
the node answering dies after the work and before its answer was kept, a retry through
another node is answered from what was done instead of doing it twice."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_working_for: ContextVar[tuple[str, str] | None] = ContextVar(
    "certbroker_idempotency", default=None
)


@contextlib.contextmanager
def working_for(owner: str, key: str) -> Iterator[None]:
    """While the request holding (owner, key) does its work (in this thread)."""
    token = _working_for.set((owner, key))
    try:
        yield
    finally:
        _working_for.reset(token)


def current() -> tuple[str, str] | None:
    """The (owner, key) the work under way is for; None without an Idempotency-Key."""
    return _working_for.get()
