"""The HTTP-01 responder's look-up of a token's key authorization.

The responder answers every request the CA sends with one look-up, and on SQLite that
look-up runs on the responder's event loop: one SELECT by primary key, prepared once, on
a plain sqlite3 connection of its own. Through SQLAlchemy it cost about 300 µs a request
(bench/responder.py); this costs about 10 µs. Any other store is asked through the
repository, in the responder's thread pool.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Callable

from sqlalchemy import Engine

_SELECT = "SELECT key_authorization FROM challenges WHERE token = ?"


class SqliteTokenLookup:
    """Key authorization by token, read from a SQLite store (WAL: never waits for a writer)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # used from one thread; the lock only guards misuse

    def __call__(self, token: str) -> str | None:
        with self._lock:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
            try:
                row = conn.execute(_SELECT, (token,)).fetchone()
            except sqlite3.Error:
                self.close()  # the next request opens it again
                raise
        return None if row is None else str(row[0])

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: a missing store is an error here, never a new, empty (0644) file.
        uri = f"file:{urllib.parse.quote(self.path)}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def token_lookup(
    engine: Engine, repository_lookup: Callable[[str], str | None]
) -> tuple[Callable[[str], str | None], bool]:
    """The look-up for this store, and whether it is fast enough to run on the event loop."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return SqliteTokenLookup(database), True
    return repository_lookup, False
