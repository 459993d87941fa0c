"""A store that runs out of space: the one place where the database's "disk full" becomes
`StoreFull`, and this process's view of it (an episode: since when writes are refused).

Where it surfaces: SQLite says SQLITE_FULL ("database or disk is full"), on a statement
or at COMMIT; PostgreSQL says SQLSTATE 53100 ("could not extend file …: No space left on
device") on the statement that needs a new page. Either way the transaction is rolled
back whole (SQLite undoes a failed COMMIT itself; SQLAlchemy rolls back the rest), so a
step of an order is stored entirely or not at all. The mapping is an engine
`handle_error` hook, so every path meets it: the repository, migrations, `db copy` and
`backup`. A PostgreSQL that cannot write its own write-ahead log stops (PANIC) and drops
every connection: that is an outage (`StoreUnavailable`, store/db.py), not this.

An episode starts with the first refused write and ends when a write that needs new space
goes through: a probe (`SpaceWatch.settle`), tried at most every PROBE_EVERY seconds
after a write commits and when the alarm is shown (/readyz, the alarms), so the alarm
clears soon after space is freed even in an idle `serve`. Its start is one line in the
log, said by whoever reports it first (`report_full`: the threads of `serve`, the API);
its end is one line too, and an event (`store-full`) recorded once the store takes
writes again: the alarm itself lives in the process (the full store cannot hold it).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, delete, event, insert, text
from sqlalchemy.engine import ExceptionContext

from certbroker.domain.errors import StoreFull
from certbroker.domain.models import EventKind
from certbroker.store.db import write_lock
from certbroker.store.schema import events, runtime_settings

log = logging.getLogger("certbroker.store")

SQLITE_FULL = 13  # the primary result code; extended codes keep it in the low byte
PG_DISK_FULL = "53100"
ENOSPC_TEXT = "No space left on device"
PROBE_EVERY = 2.0  # seconds between two looks for room while writes are refused
PROBE = "space-probe"  # the runtime_settings row a probe writes and deletes (SQLite)
PROBE_ROW = "." * 8192  # pages of their own: room the file must have, not a page's rest


def no_space_reason(error: BaseException) -> str | None:
    """The database's words when `error` (the driver's exception) means it ran out of
    space; None for any other error."""
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return str(error) if code & 0xFF == SQLITE_FULL else None
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and (sqlstate == PG_DISK_FULL or ENOSPC_TEXT in str(error)):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return lines[0] if lines else sqlstate
    return None


@dataclass
class Episode:
    """Writes refused for lack of space, in this process, since `since`."""

    since: datetime
    reason: str
    refused: int = 0


def _describe(engine: Engine) -> tuple[str, str]:
    """(where the store is, what to free) for the line; never a password."""
    url = engine.url
    if engine.dialect.name == "sqlite":
        path = Path(url.database or "")
        return str(path), f"free space on the disk that holds {path.parent}"
    host = url.host or str(url.query.get("host") or "localhost")
    return (
        f"{host}:{url.port or 5432}/{url.database or ''}",
        "free space on the database server's disk (PostgreSQL's data directory)",
    )


class SpaceWatch:
    """One engine's episodes: `refused` (the error hook) opens one, `settle` ends it once a
    write that needs new space goes through (a probe, at most every PROBE_EVERY seconds,
    asked for after each write that commits and by whoever shows the alarm)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)  # the watch must not keep its engine alive
        self.where, self.advice = _describe(engine)
        self.sqlite = engine.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._probing = threading.local()  # a probe refused is no write refused
        self._probed = 0.0  # monotonic: the last probe
        self.full: Episode | None = None  # the open episode; read without the lock

    def refused(self, reason: str) -> StoreFull:
        with self._lock:
            if self.full is None:
                self.full = Episode(datetime.now(UTC), reason)
                self._probed = time.monotonic()  # the refusal was as good as a probe
            if not getattr(self._probing, "on", False):
                self.full.refused += 1
            since = self.full.since
        return StoreFull(self.where, reason, since, advice=self.advice)

    def _on_error(self, context: ExceptionContext) -> None:
        reason = no_space_reason(context.original_exception)
        if reason is not None:
            raise self.refused(reason) from context.original_exception

    def settle(self) -> None:
        """While an episode is open: try a write that needs new space, and end the
        episode when it goes through. A write that merely commits proves nothing:
        SQLite skips a row rewritten as it was, and PostgreSQL takes updates and deletes
        into the room its pages keep."""
        if self.full is None:  # the usual case: one look
            return
        with self._lock:
            now = time.monotonic()
            if self.full is None or now - self._probed < PROBE_EVERY:
                return
            self._probed = now
        engine = self._engine()
        if engine is None:
            return
        self._probing.on = True
        try:
            with write_lock(engine), engine.begin() as conn:
                if self.sqlite:  # a row in and out again: its pages go to the WAL
                    conn.execute(
                        insert(runtime_settings).values(
                            name=PROBE, value=PROBE_ROW, updated_at=datetime.now(UTC)
                        )
                    )
                    conn.execute(delete(runtime_settings).where(runtime_settings.c.name == PROBE))
                else:  # a new relation's first page is written at once
                    conn.execute(text("CREATE TEMP TABLE space_probe ON COMMIT DROP AS SELECT 1"))
        except Exception as exc:  # still full, or worse: never the caller's error
            if not isinstance(exc, StoreFull):
                log.debug("looking for room in the store failed: %s", exc)
            return
        finally:
            self._probing.on = False
        self._ended(engine)

    def _ended(self, engine: Engine) -> None:
        """One line says the store takes writes again, and an event records the episode."""
        with self._lock:
            ended, self.full = self.full, None
        if ended is None:
            return
        until = datetime.now(UTC)
        lasted = _duration((until - ended.since).total_seconds())
        log.warning(
            "the store %s takes writes again after %s; %d write(s) were refused meanwhile "
            "and are tried again",
            self.where,
            lasted,
            ended.refused,
        )
        message = (
            f"the store {self.where} was full from {ended.since:%Y-%m-%d %H:%M:%S} to "
            f"{until:%H:%M:%S} UTC ({lasted}): {ended.refused} write(s) were refused and "
            "rolled back, and tried again; nothing stored before was lost"
        )
        try:
            with write_lock(engine), engine.begin() as conn:
                conn.execute(
                    insert(events).values(
                        at=until, kind=EventKind.STORE_FULL.value, message=message
                    )
                )
        except Exception as exc:  # full again (a new episode began), or unreachable
            log.debug("the store-full event could not be recorded: %s", exc)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_watches: weakref.WeakKeyDictionary[Engine, SpaceWatch] = weakref.WeakKeyDictionary()
_watches_guard = threading.Lock()


def watch_space(engine: Engine) -> SpaceWatch:
    """The engine's watch, made (and its error hook installed) on the first call: every
    repository calls it, and so do `migrate`'s and `db copy`'s callers."""
    with _watches_guard:
        watch = _watches.get(engine)
        if watch is None:
            watch = _watches[engine] = SpaceWatch(engine)
            event.listen(engine, "handle_error", watch._on_error)
    return watch


_reported: dict[str, datetime] = {}  # per store: the start of the episode already said
_reported_guard = threading.Lock()


def report_full(exc: StoreFull) -> None:
    """The one line of an episode in the log, by whichever thread of this process meets
    it first (the workers, the scheduler, the outboxes, the API); the others are quiet.
    The main thread stays quiet too: a command says it once itself, as its error (and
    what its exit then fails to write, ACME timings, would only say it twice)."""
    if threading.current_thread() is threading.main_thread():
        return
    with _reported_guard:
        if _reported.get(exc.where) == exc.since:
            return
        _reported[exc.where] = exc.since
    log.error("%s; reads go on, and the writes are tried again every few seconds", exc)
