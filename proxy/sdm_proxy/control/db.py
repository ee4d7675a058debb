"""Engine and session factory for the state database, and the Alembic schema check.

SQLite (the embedded default) runs in WAL mode with foreign keys on, and every transaction starts
with ``BEGIN IMMEDIATE`` so that concurrent writers (CLI and gateway) queue instead of failing
half-way. PostgreSQL is used as-is by URL.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StateError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
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


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (used by ``sdm init`` and ``sdm migrate``)."""
    command.upgrade(alembic_config(engine), "head")


def check_schema(engine: Engine) -> None:
    """Refuse to run against a database that is not at the newest schema revision."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
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

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any exception."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except OperationalError as exc:
                session.rollback()
                raise StateError(f"state database error: {exc.orig}") from None
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
