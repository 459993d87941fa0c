"""Engine set-up and migrations.

SQLite runs in WAL mode with a busy timeout, and write transactions start with
BEGIN IMMEDIATE so concurrent writers queue instead of failing on a lock upgrade.
Within one process, writers queue on a Python lock before they ask SQLite (`write_lock`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from certbroker.domain.errors import ConfigError

HEAD_REVISION = "0001"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            parent = Path(path).parent
            if not parent.exists():
                parent.mkdir(parents=True, mode=0o700)
        engine = create_engine(url, pool_size=16, max_overflow=16, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            if conn.get_execution_options().get("readonly"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=16, max_overflow=16)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot use database_url: {exc}") from None


# Re-entrant: a write nested in a write of the same thread then fails on SQLite's busy
# timeout, as it did before this lock, instead of hanging for good.
_write_locks: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_write_locks_guard = threading.Lock()


def write_lock(engine: Engine) -> AbstractContextManager[Any]:
    """What a write transaction holds, in this process, before it begins.

    SQLite lets one writer in at a time, and a writer that finds the database locked
    sleeps in SQLite's busy handler (1, 2, 5, … up to 100 ms a turn) however soon the
    lock is free again. With eight workers that sleeping was half of their time
    (py-spy, bench/issuance.py cb-pool), so the threads of one process queue on a Python
    lock instead, which hands over at once; other processes still meet the busy handler.
    PostgreSQL has row locks and needs none of this.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _write_locks_guard:
        lock = _write_locks.get(engine)
        if lock is None:
            lock = _write_locks[engine] = threading.RLock()
    return lock


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect().execution_options(readonly=True) as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            return None if row is None else str(row[0])
    except OperationalError:
        return None
    except SQLAlchemyError:
        return None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (cheap when it already is)."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "certbroker.store:migrations")
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    os.environ.setdefault("ALEMBIC_SKIP_LOGGING", "1")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
