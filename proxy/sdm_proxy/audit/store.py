"""Inserting chained rows into ``audit_events``, the cheap way for each database.

Why not one ``executemany``: on SQLite, Python's ``sqlite3`` releases the GIL around every row's
step (and twice more per row). The gateway's event loop then takes the GIL and keeps it until its
next system call, so a row-at-a-time insert in the writer thread advances at the event loop's pace,
about one row per statement the loop handles, while it needs two (``query`` and ``query.end``).
One statement of many rows releases the GIL once for all of them. SQLite spends somewhat more CPU
per row on a multi-row ``VALUES`` list, but in the writer thread, off the event loop's core.

PostgreSQL (and anything else) goes through SQLAlchemy Core, whose insertmanyvalues already batches.
"""

from __future__ import annotations

import sqlite3
from itertools import chain

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .chain import GENESIS
from .reader import HEAD, HEAD_ID

from .reader import EVENTS

ROW = ("seq", "id", "ts", "type", "user", "body", "prev_hash", "hash")  # a row, in this column order
_COLUMNS = ", ".join('"' + c + '"' for c in ROW)
_ONE = "(" + ", ".join("?" * len(ROW)) + ")"
_ROWS_PER_STATEMENT = 1024  # past this, longer statements gained nothing here
_sizes: tuple[int, ...] | None = None  # statement sizes to cut a batch into, largest first
_sql: dict[int, str] = {}


def insert_events(s: Session, rows: list[tuple]) -> None:
    """Insert ``rows`` (columns as in ``ROW``) in the session's transaction."""
    conn = s.connection()
    if conn.dialect.name != "sqlite":
        s.execute(insert(EVENTS), [dict(zip(ROW, r)) for r in rows])
        return
    i, n = 0, len(rows)
    for size in _sizes or _statement_sizes(conn.connection.driver_connection):
        while n - i >= size:
            conn.exec_driver_sql(_sqlite_insert(size), tuple(chain.from_iterable(rows[i:i + size])))
            i += size
    if i < n:  # a few rows left over
        conn.exec_driver_sql(_sqlite_insert(1), rows[i:])


def _sqlite_insert(size: int) -> str:
    sql = _sql.get(size)
    if sql is None:  # one text per size, so sqlite3's statement cache prepares each once
        sql = _sql[size] = f"INSERT INTO {EVENTS.name} ({_COLUMNS}) VALUES {', '.join([_ONE] * size)}"
    return sql


def _statement_sizes(dbapi_conn) -> tuple[int, ...]:
    """Rows per statement within SQLite's bound-parameter limit (999 before SQLite 3.32)."""
    global _sizes
    try:
        limit = dbapi_conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except AttributeError:  # Python < 3.11
        limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    top = max(1, min(_ROWS_PER_STATEMENT, limit // len(ROW)))
    _sizes = tuple(sorted({top, min(top, 128), min(top, 16)}, reverse=True))
    return _sizes


def insert_head_if_missing(s: Session) -> None:
    """The chain's head row at its genesis, unless it exists (the first append ever)."""
    values = {"id": HEAD_ID, "seq": 0, "hash": GENESIS}
    dialect = s.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        mod = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
        s.execute(mod.insert(HEAD).values(**values).on_conflict_do_nothing(index_elements=["id"]))
    else:  # a concurrent first append may then fail once (and is refused, fail closed)
        try:
            with s.begin_nested():
                s.execute(insert(HEAD).values(**values))
        except IntegrityError:
            pass
