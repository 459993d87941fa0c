"""Copying a whole store into an empty one: `certbroker db copy` (SQLite to PostgreSQL),
`certbroker backup` (the store into a new SQLite file) and `certbroker restore`.

The source is read in one read-only transaction: a snapshot on SQLite (WAL) and, on
PostgreSQL, REPEATABLE READ, so a copy taken while nodes serve is consistent. Rows go
across as they are, sealed secrets included (they stay sealed under the same master
key), table by table in foreign-key order, in one write transaction on the target: a
failed copy leaves the target as empty as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Table,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
)

from certbroker.domain.errors import UsageError
from certbroker.store.db import HEAD_REVISION, current_revision, migrate
from certbroker.store.schema import metadata, runtime_settings
from certbroker.store.space import watch_space

BATCH = 1000


def where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _tables() -> list[Table]:
    return list(metadata.sorted_tables)


def holds_anything(engine: Engine) -> str | None:
    """The first table of a migrated store that holds rows (the settings migrations
    write aside), or None for an empty one."""
    present = set(inspect(engine).get_table_names())
    with engine.connect().execution_options(readonly=True) as conn:
        for table in _tables():
            if table is runtime_settings or table.name not in present:
                continue
            if conn.execute(select(func.count()).select_from(table)).scalar_one():
                return table.name
    return None


def copy_store(
    source: Engine, target: Engine, progress: Callable[[str], None] = lambda _: None
) -> dict[str, int]:
    """Copy every row of `source` into `target` (brought to this certbroker's schema
    first; it must hold nothing). Returns the rows copied per table. A target that runs
    out of space is StoreFull, its transaction rolled back: it is left as empty as it was."""
    watch_space(target)
    found = current_revision(source)
    if found != HEAD_REVISION:
        raise UsageError(
            f"the store {where(source)} is at schema revision {found or 'none (empty)'}, "
            f"this certbroker copies revision {HEAD_REVISION}: run `certbroker db upgrade` "
            "on it first (with this certbroker)"
        )
    migrate(target, upgrade=True)
    busy = holds_anything(target)
    if busy is not None:
        raise UsageError(
            f"the store {where(target)} is not empty (its {busy} table holds rows): copy, "
            "backup and restore write only into an empty store. Move the data directory "
            "aside, or create an empty database, and run it again"
        )
    counts: dict[str, int] = {}
    with source.connect().execution_options(readonly=True) as src, src.begin():
        if source.dialect.name == "postgresql":
            src.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        with target.begin() as dst:
            dst.execute(delete(runtime_settings))  # the migrations' own: the source's win
            for table in _tables():
                order = [c for c in table.primary_key.columns] or list(table.columns)
                rows = src.execution_options(yield_per=BATCH).execute(
                    select(table).order_by(*order)
                )
                counts[table.name] = 0
                for batch in rows.partitions(BATCH):
                    dst.execute(insert(table), [dict(row._mapping) for row in batch])
                    counts[table.name] += len(batch)
                if counts[table.name]:
                    progress(f"{table.name}: {counts[table.name]} rows")
            _move_sequences(dst, _next_ids(src))
    return counts


def _id_tables() -> list[tuple[Table, Column[Any]]]:
    """The tables whose integer id the database hands out, with that column."""
    found = []
    for table in _tables():
        pk = list(table.primary_key.columns)
        if len(pk) == 1 and pk[0].autoincrement is not False and str(pk[0].type) == "INTEGER":
            found.append((table, pk[0]))
    return found


def _next_ids(conn: Connection) -> dict[str, int]:
    """The id each table of a store would hand out next: past its largest row, and past
    deleted ones (an id is never given again, migration 0027), so a copy carries on there."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(text("SELECT name, seq FROM sqlite_sequence"))
        return {str(name): int(seq) + 1 for name, seq in rows}
    found = {}
    for table, column in _id_tables():
        sequence = _sequence(conn, table, column)
        if sequence is not None:
            last, called = conn.execute(
                text(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608 (the catalog's)
            ).one()
            found[table.name] = int(last) + 1 if called else int(last)
    return found


def _sequence(conn: Connection, table: Table, column: Column[Any]) -> str | None:
    name = conn.execute(
        text("SELECT pg_get_serial_sequence(:table, :column)"),
        {"table": table.name, "column": column.name},
    ).scalar_one()
    return None if name is None else str(name)


def _move_sequences(conn: Connection, next_ids: dict[str, int]) -> None:
    """Rows came with their IDs: each table hands out ids after the largest it holds and
    after the source's next (rows deleted there stay gone here)."""
    for table, column in _id_tables():
        largest = conn.execute(select(func.max(column))).scalar_one() or 0
        following = max(largest + 1, next_ids.get(table.name, 1))
        if conn.dialect.name == "sqlite":
            done = conn.execute(
                text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :name"),
                {"seq": following - 1, "name": table.name},
            )
            if not done.rowcount:
                conn.execute(
                    text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :seq)"),
                    {"seq": following - 1, "name": table.name},
                )
            continue
        sequence = _sequence(conn, table, column)
        if sequence is not None:
            conn.execute(
                text("SELECT setval(CAST(:sequence AS regclass), :next, false)"),
                {"sequence": sequence, "next": following},
            )
