"""Engine set-up and migrations.

SQLite runs in WAL mode with a busy timeout, and write transactions start with
BEGIN IMMEDIATE so concurrent writers queue instead of failing on a lock upgrade.
Writers queue on a lock before they ask SQLite (`write_lock`): a Python lock between
threads, an flock between processes.

A database server that cannot be reached, on connecting or mid-statement, is
`StoreUnavailable` (one line: host, port, the driver's reason; never the password),
whichever repository method met it (`_unreachable`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DatabaseError, OperationalError, SQLAlchemyError

from certbroker.domain.errors import ConfigError, StoreUnavailable

# The newest migration (store/migrations/versions), known without importing Alembic, so
# that a command on a current store does not (importing Alembic costs more than 0.1 s, on
# top of SQLAlchemy). tests/unit/test_migrations.py holds it to Alembic's own head.
HEAD_REVISION = "0027"
MIGRATION_LOCK = 0x63657274  # PostgreSQL advisory lock held while the schema changes


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
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=16,
            max_overflow=16,
            connect_args=_connect_args(url),
        )
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot use database_url: {exc}") from None
    event.listen(engine, "handle_error", _unreachable)
    return engine


CONNECT_TIMEOUT = 10  # seconds; a host that drops packets would hold a start for minutes


def _connect_args(url: str) -> dict[str, Any]:
    """libpq waits for a connection as long as the kernel does (minutes, when the host
    drops packets): `serve`'s start and `/readyz` would hang rather than say the database
    is unreachable. A `connect_timeout` in the URL wins."""
    if make_url(url).get_backend_name() != "postgresql" or "connect_timeout" in url:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


def _unreachable(context: ExceptionContext) -> None:
    """The one place a lost or refused connection becomes `StoreUnavailable`: on
    connecting (refused, timed out, the server starting up or shutting down) and when a
    connection breaks mid-statement (the server crashed or was stopped). SQLAlchemy
    still invalidates the broken connection, so the pool connects anew next time. A
    pool's pre-ping is left alone: it reconnects by itself when the ping fails. Any other
    error (a constraint, a serialization failure) stays SQLAlchemy's."""
    error = context.original_exception
    dbapi = context.dialect.loaded_dbapi
    if context.is_pre_ping or not isinstance(error, (dbapi.OperationalError, dbapi.InterfaceError)):
        return
    if context.connection is not None and not context.is_disconnect:
        return
    url = context.engine.url if context.engine is not None else None
    raise StoreUnavailable(_address(url), _reason(error, url)) from error


def _address(url: URL | None) -> str:
    """host:port of a database URL (the socket directory when it names one)."""
    if url is None:
        return "the configured address"
    host = url.host or str(url.query.get("host") or "localhost")
    return f"{host}:{url.port or 5432}"


# What libpq puts before its reason: the address the line names already, a severity.
_PREFIX = re.compile(
    r'^(?:connection failed: )?(?:connection to server (?:at "[^"]*"(?: \([^)]*\))?, '
    r'port \d+|on socket "[^"]*") failed: )?(?:FATAL: +)?'
)
# libpq's hints: the line says what to check itself.
_HINTS = ("Is the server running", "This probably means", "before or while processing")


def _reason(error: BaseException, url: URL | None) -> str:
    """The driver's reason in one line: libpq's message without the address it repeats
    and its hints (one per address it tried, each on a line of its own)."""
    parts: list[str] = []
    for line in str(error).splitlines():
        line = _PREFIX.sub("", line.strip())
        if line and not line.startswith(_HINTS) and line not in parts:
            parts.append(line)
    reason = "; ".join(parts) or type(error).__name__
    if url is not None and url.password:  # libpq does not repeat it; never print it anyway
        reason = reason.replace(str(url.password), "***")
    return reason


class _WriteLock:
    """Threads of this process queue on an RLock; processes on an flock of a file beside
    the database (<db>-writelock), which wakes the next writer as soon as it is free.

    Re-entrant: a write nested in a write of the same thread then fails on SQLite's busy
    timeout, as it would without this lock, instead of hanging for good.
    """

    def __init__(self, lock_path: Path | None) -> None:
        self._threads = threading.RLock()
        self._path = lock_path
        self._fd: int | None = None
        self._pid = 0
        self._depth = 0

    def _lock_file(self) -> int | None:
        if self._path is None:
            return None
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._path = None  # read-only directory: SQLite's busy handler still works
                return None
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> _WriteLock:
        self._threads.acquire()
        if self._depth == 0:
            try:
                fd = self._lock_file()
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1
        return self

    def __exit__(self, *_exc: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


_write_locks: weakref.WeakKeyDictionary[Engine, _WriteLock] = weakref.WeakKeyDictionary()
_write_locks_guard = threading.Lock()


def write_lock(engine: Engine) -> AbstractContextManager[Any]:
    """What a write transaction holds before it begins.

    SQLite lets one writer in at a time, and a writer that finds the database locked
    sleeps in SQLite's busy handler (1, 2, 5, … up to 100 ms a turn) however soon the
    lock is free again. With eight workers that sleeping was half of their time
    (py-spy, bench/issuance.py cb-pool), so writers queue on locks that hand over at
    once: a Python lock between the threads of one process, an flock between processes
    (`serve`'s worker processes, a CLI beside them). PostgreSQL has row locks and needs
    none of this.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _write_locks_guard:
        lock = _write_locks.get(engine)
        if lock is None:
            database = engine.url.database
            path = None if not database or database == ":memory:" else Path(database + "-writelock")
            lock = _write_locks[engine] = _WriteLock(path)
    return lock


def _where(engine: Engine) -> str:
    return (
        engine.url.database or ""
        if engine.dialect.name == "sqlite"
        else engine.url.render_as_string()
    )


def current_revision(engine: Engine) -> str | None:
    """The store's Alembic revision; None for a new store (no alembic_version table).
    ConfigError, in one line, for a file or database that is no certbroker store."""
    try:
        with engine.connect().execution_options(readonly=True) as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            return None if row is None else str(row[0])
    except DatabaseError as exc:
        reason = str(exc.orig)
        if "alembic_version" in reason:  # no such table (relation): a new store
            return None
        if isinstance(exc, OperationalError):
            raise ConfigError(f"cannot open the store {_where(engine)}: {reason}") from None
        raise ConfigError(
            f"{_where(engine)} is not a certbroker store ({reason}); point "
            "--data-dir / CERTBROKER_DATA_DIR (or database_url) at certbroker's store, or "
            "move that file away to start a new one"
        ) from None


def upgrades_itself(engine: Engine) -> bool:
    """Whether a process brings the schema up to date by itself when it opens the store:
    SQLite's, the one machine's file, does; a shared database (PostgreSQL, several nodes)
    waits for `certbroker db upgrade`, run once, so nodes of two versions never race to
    change it."""
    return engine.dialect.name == "sqlite"


def migrate(engine: Engine, *, upgrade: bool | None = None) -> tuple[str | None, str]:
    """Bring the schema to the newest revision (`upgrade`; default: `upgrades_itself`),
    or refuse a store that is not at it, saying what to run. A store already there costs
    one query, and Alembic is not imported. A database holding other tables, or a schema
    revision this certbroker does not know, is refused with one line saying so. Returns
    (the revision found, the revision now)."""
    revision = current_revision(engine)
    if revision == HEAD_REVISION:
        return revision, revision
    if revision is not None and revision > HEAD_REVISION:
        raise ConfigError(_newer(engine, revision))
    if revision is None:
        from sqlalchemy import inspect

        foreign = sorted(inspect(engine).get_table_names())
        if foreign:
            shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
            raise ConfigError(
                f"{_where(engine)} is not a certbroker store: it holds other tables "
                f"({shown}) and no certbroker schema; point --data-dir / "
                "CERTBROKER_DATA_DIR (or database_url) at certbroker's store or an empty "
                "database"
            )
    if not (upgrades_itself(engine) if upgrade is None else upgrade):
        found = revision or "none (an empty database)"
        raise ConfigError(
            f"the store {_where(engine)} has schema revision {found}; this certbroker needs "
            f"{HEAD_REVISION}: run `certbroker db upgrade` once (from one node), then start "
            "the nodes"
        )
    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", "certbroker.store:migrations")
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    os.environ.setdefault("ALEMBIC_SKIP_LOGGING", "1")
    try:
        with engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
            if engine.dialect.name == "postgresql":
                # Two `db upgrade` at once: the second waits, then finds nothing to do.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except CommandError:
        raise ConfigError(_newer(engine, str(revision))) from None
    return revision, HEAD_REVISION


@contextlib.contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite: foreign keys off while migrations run (outside their transaction: SQLite
    ignores the pragma inside one), as SQLite says to change a table: a migration that
    rebuilds one (create, copy, drop, rename) would otherwise delete, or cascade to, every
    row pointing at the table it drops. The migrations check what they rebuilt
    (`PRAGMA foreign_key_check`); the connection has them on again before it is reused."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def _newer(engine: Engine, revision: str) -> str:
    return (
        f"the store {_where(engine)} has schema revision {revision}, which this "
        f"certbroker (newest: {HEAD_REVISION}) does not know: it was made by a newer "
        "certbroker; run that version, or restore a backup made with this one"
    )
