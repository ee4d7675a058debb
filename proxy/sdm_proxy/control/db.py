"""Engine and session factory for the state database, and the Alembic schema check.

SQLite (the embedded default) runs in WAL mode with foreign keys on, and every transaction starts
with ``BEGIN IMMEDIATE`` so that concurrent writers (CLI and gateway) queue instead of failing
half-way. PostgreSQL is used as-is by URL.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import Conflict, SdmError, StateError

log = logging.getLogger("sdm.state")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest Alembic revision. Checked against migrations/ by a test, so start-up need not load Alembic.
SCHEMA_HEAD = "0004"


def _create_private_sqlite_file(url: str) -> None:
    """Create a missing SQLite file as 0600 before SQLite makes it 0644 (WAL files copy the mode)."""
    database = make_url(url).database
    if database and database != ":memory:" and not os.path.exists(database):
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))


def _require_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not os.path.exists(database):
        raise StateError(f"state database {database} is missing: restore it from a backup "
                         "(or run `sdm init` with a new SDM_HOME)")


def make_engine(url: str, *, create: bool = False) -> Engine:
    """``create``: make a missing SQLite file (only ``sdm init`` and ``sdm migrate`` do)."""
    if url.startswith("sqlite"):
        if create:
            _create_private_sqlite_file(url)
        else:
            _require_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (used by ``sdm init`` and ``sdm migrate``)."""
    from alembic import command

    command.upgrade(alembic_config(engine), "head")


def check_schema(engine: Engine) -> None:
    """Refuse to run against a database that is not at the newest schema revision."""
    head = SCHEMA_HEAD
    try:
        with engine.connect() as conn:
            has_table = engine.dialect.has_table(conn, "alembic_version")
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar() if has_table else None
    except (OperationalError, DatabaseError) as exc:
        raise StateError(f"state database is unreadable or corrupt: {exc.orig}") from None
    if current != head:
        raise StateError(
            f"state database is at schema {current or 'none'}, this sdm needs {head}: run `sdm migrate`"
        )


class StateDB:
    """The state database: one engine, a session factory and a ``transaction()`` helper."""

    def __init__(self, url: str, *, check: bool = True):
        self.url = url
        self.engine = make_engine(url)
        if check:
            check_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time and every transaction here writes (BEGIN IMMEDIATE).
        # Threads of this process queue on a lock instead of SQLite's busy handler, which sleeps
        # 1, 2, 5, 10 ... ms between tries: the gateway's unlocks and audit batches would pay that.
        self._writer = threading.RLock() if url.startswith("sqlite") else nullcontext()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any exception."""
        with self._writer, self._sessions() as session:
            try:
                yield session
                session.commit()
            except OperationalError as exc:
                session.rollback()
                raise StateError(f"state database error: {exc.orig}") from None
            except IntegrityError:
                # Checked first, then inserted: another gateway (PostgreSQL state) did the same in
                # between. A 409, not a 500; the constraint's text is not needed to say so.
                session.rollback()
                raise Conflict("the state changed concurrently (another request added or removed the same "
                               "thing); try again") from None
            except BaseException:
                session.rollback()
                raise
            callbacks = session.info.pop("after_commit", [])
        # Work that must follow a successful commit (e.g. mirroring audit events to the JSON-lines
        # sink), outside the writer lock (it takes the audit log's own locks); its failure is
        # logged, since the commit already happened.
        for callback in callbacks:
            try:
                callback()
            except SdmError as exc:
                log.warning("%s", exc.message)

    def dispose(self) -> None:
        self.engine.dispose()
