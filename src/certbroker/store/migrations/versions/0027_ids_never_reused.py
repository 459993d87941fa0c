"""Ids are never given to a new object (issue 24). Without AUTOINCREMENT, SQLite hands out
the highest rowid plus one, so deleting the newest certificate gave its id to the next
one, and whatever still pointed at the old (an agent's subscription, an installation, a
device request) pointed at the new. Every SQLite table with an integer `id` is rebuilt
with `id INTEGER PRIMARY KEY AUTOINCREMENT`, keeping every row and id, its indexes and its
triggers (SQLite's way: create the new table, copy, drop the old, rename, with foreign
keys off, which `store.db.migrate` does around every migration, and checked afterwards).
PostgreSQL's sequences never hand out an id twice: nothing to do there.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

import re

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

_ID = re.compile(r"^(\s*)id INTEGER NOT NULL,", re.MULTILINE)
_PRIMARY_KEY = re.compile(r",\s*PRIMARY KEY \(id\)|PRIMARY KEY \(id\),\s*")


def autoincrementing(sql: str, new_name: str) -> str | None:
    """The CREATE TABLE statement of a table whose integer `id` is its primary key, with
    AUTOINCREMENT and another name; None for any other table."""
    if "AUTOINCREMENT" in sql or not _ID.search(sql) or len(_PRIMARY_KEY.findall(sql)) != 1:
        return None
    sql = _ID.sub(r"\1id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,", sql, count=1)
    sql = _PRIMARY_KEY.sub("", sql, count=1)
    return re.sub(r'^CREATE TABLE\s+("?)(\w+)\1', f'CREATE TABLE "{new_name}"', sql, count=1)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        # Dropping a table would delete, or cascade to, every row pointing at it.
        raise RuntimeError("migration 0027 rebuilds tables and needs foreign keys off")
    tables = bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).all()
    for name, sql in tables:
        new_name = f"_new_{name}"
        create = autoincrementing(str(sql), new_name)
        if create is None:
            continue
        extras = [
            str(row[0])
            for row in bind.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', "
                "'trigger') AND sql IS NOT NULL",
                (name,),
            )
        ]
        columns = ", ".join(
            f'"{row[1]}"' for row in bind.exec_driver_sql(f'PRAGMA table_info("{name}")')
        )
        bind.exec_driver_sql(create)
        # Names from sqlite_master and PRAGMA table_info, not input.
        copy = f'INSERT INTO "{new_name}" ({columns}) SELECT {columns} FROM "{name}"'  # noqa: S608
        bind.exec_driver_sql(copy)
        bind.exec_driver_sql(f'DROP TABLE "{name}"')
        bind.exec_driver_sql(f'ALTER TABLE "{new_name}" RENAME TO "{name}"')
        for statement in extras:
            bind.exec_driver_sql(statement)
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"migration 0027 left rows pointing at nothing: {broken[:5]}")


def downgrade() -> None:
    """AUTOINCREMENT stays: an older certbroker reads and writes such tables as before."""
