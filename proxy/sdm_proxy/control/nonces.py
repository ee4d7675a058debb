"""Burning unlock-request nonces (replay protection), in one statement on the connect path.

A nonce row lives until ``issued_at + 2 × clock window``. Burning is an upsert that takes the row
only when none exists or the one there has expired: one round trip, no IntegrityError (which
would abort a PostgreSQL transaction), and a concurrent twin waits on the unique key and then
finds a live row, so exactly one of two twins wins. Purging expired rows is housekeeping only (a
stale request is stopped by the clock window, an expired row is overwritten by the upsert), so it
runs at most once per ``PURGE_INTERVAL`` per engine and process instead of on every unlock.
"""

from __future__ import annotations

import threading
import time
import weakref
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from .models import UsedNonce

PURGE_INTERVAL = 60.0  # seconds (monotonic)

_N = UsedNonce.__table__
_PURGE = delete(_N).where(_N.c.expires_at < bindparam("now"))
_EXISTS = select(_N.c.nonce).where(_N.c.nonce == bindparam("nonce"))
_INSERT = insert(_N)

_last_purge: "weakref.WeakKeyDictionary[Engine, float]" = weakref.WeakKeyDictionary()
_purge_lock = threading.Lock()
_upserts: dict[str, object] = {}


def _purge_due(engine: Engine) -> bool:
    with _purge_lock:
        last, now = _last_purge.get(engine), time.monotonic()
        if last is not None and now - last < PURGE_INTERVAL:
            return False
        _last_purge[engine] = now
        return True


def _upsert_for(dialect: str):
    """INSERT ... ON CONFLICT (nonce) DO UPDATE ... WHERE the stored row has expired RETURNING
    (RETURNING rather than rowcount, which drivers need not report for an INSERT)."""
    if dialect not in _upserts:
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            return None
        stmt = dialect_insert(_N)
        _upserts[dialect] = stmt.on_conflict_do_update(
            index_elements=[_N.c.nonce],
            set_={"proxy_id": stmt.excluded.proxy_id, "expires_at": stmt.excluded.expires_at},
            where=_N.c.expires_at < bindparam("now"),
        ).returning(_N.c.nonce)  # a row back: taken; none: a live row holds it
    return _upserts[dialect]


def burn_nonce(conn: Connection, nonce: str, proxy_id: str, expires_at: datetime, now: datetime) -> bool:
    """Record the nonce as used; False when a live row already holds it (a replay)."""
    if _purge_due(conn.engine):
        conn.execute(_PURGE, {"now": now})
    row = {"nonce": nonce, "proxy_id": proxy_id, "expires_at": expires_at}
    upsert = _upsert_for(conn.dialect.name)
    if upsert is not None:
        return conn.execute(upsert, {**row, "now": now}).first() is not None
    return _burn_portably(conn, row, now)


def _burn_portably(conn: Connection, row: dict, now: datetime) -> bool:
    """Other state databases: drop an expired holder, look, insert (a twin trips the key)."""
    conn.execute(delete(_N).where(_N.c.nonce == row["nonce"], _N.c.expires_at < now))
    if conn.execute(_EXISTS, {"nonce": row["nonce"]}).first() is not None:
        return False
    try:
        conn.execute(_INSERT, row)
    except IntegrityError:
        return False
    return True
