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

from sqlalchemy import Connection, Engine, Table, delete, func, insert, inspect, select, text

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
            if target.dialect.name == "postgresql":
                _move_sequences(dst, _tables())
    return counts


def _move_sequences(conn: Connection, tables: list[Table]) -> None:
    """Rows came with their IDs: each table's ID sequence goes on after the largest."""
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or pk[0].autoincrement is False or str(pk[0].type) != "INTEGER":
            continue
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": table.name, "column": pk[0].name},
        ).scalar_one()
        if sequence is None:
            continue
        largest = conn.execute(select(func.max(pk[0]))).scalar_one()
        conn.execute(
            text("SELECT setval(CAST(:sequence AS regclass), :next, false)"),
            {"sequence": sequence, "next": (largest or 0) + 1},
        )
