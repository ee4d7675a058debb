"""audit_events.id without its unique index (migration 0002): the migration keeps every row and the
chain verifying, ``known_ids`` finds chained ids through ``ts``, and spool recovery still never
chains an event twice. On SQLite, and on PostgreSQL state when its cluster is available."""

from __future__ import annotations

import json
import secrets

import pytest
import sqlalchemy as sa
from alembic import command

from sdm_proxy.audit import AuditLog, CheckpointSigner, verify_db
from sdm_proxy.audit import reader as reader_module
from sdm_proxy.audit.events import Event, canonical_json, query_event
from sdm_proxy.audit.spool import recover_spools
from sdm_proxy.control.db import StateDB, alembic_config, make_engine, upgrade
from sdm_proxy.errors import AuditUnavailable, Conflict

from tests.support.audit_log import chained_queries

OTHER_INDEXES = {"ix_audit_events_ts", "ix_audit_events_type", "ix_audit_events_user"}


def q(n: int) -> Event:
    return query_event(user=f"u{n % 3}", session_id="s", proxy_id="p", datasource="d", credential="c",
                       db_user="x", protocol="postgres", query=f"SELECT {n}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request, tmp_path):
    """A new, empty state database (no schema yet)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
        make_engine(url, create=True).dispose()
        return url
    import psycopg

    pg = request.getfixturevalue("pg_cluster")
    name = f"sdm_state_{secrets.token_hex(4)}"
    with psycopg.connect(**{**pg.connect_kwargs("bootstrap"), "dbname": "postgres"}, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{pg.superuser}:{pg.superuser_password}@{pg.host}:{pg.port}/{name}"


@pytest.fixture
def engine(state_url):
    engine = make_engine(state_url)
    yield engine
    engine.dispose()


@pytest.fixture
def signer(tmp_path):
    return CheckpointSigner.load_or_create(tmp_path / "keys" / "audit-signing.pem")


@pytest.fixture
def audit_log(engine, state_url, signer):
    upgrade(engine)
    db = StateDB(state_url)
    yield AuditLog(db, signer=signer, checkpoint_every=10)
    db.dispose()


def migrate(engine, revision: str, *, down: bool = False) -> None:
    (command.downgrade if down else command.upgrade)(alembic_config(engine), revision)


def id_is_unique(engine) -> bool:
    insp = sa.inspect(engine)
    uniques = [uc["column_names"] for uc in insp.get_unique_constraints("audit_events")]
    uniques += [ix["column_names"] for ix in insp.get_indexes("audit_events") if ix["unique"]]
    return ["id"] in uniques


def index_names(engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes("audit_events")}


def all_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT * FROM audit_events ORDER BY seq"))]


@pytest.fixture
def log_0001(engine, state_url, signer):
    """A database at revision 0001 holding a chain of 45 events (checkpoints every 10)."""
    migrate(engine, "0001")
    log = AuditLog(StateDB(state_url, check=False), signer=signer, checkpoint_every=10)
    log.append_many([q(i) for i in range(45)])
    yield log
    log.db.dispose()


# ---- the migration -------------------------------------------------------------------------------


def test_upgrade_of_a_populated_0001_database_keeps_rows_and_chain(log_0001, engine, state_url, signer):
    before = all_rows(engine)
    assert id_is_unique(engine)

    upgrade(engine)

    assert not id_is_unique(engine)
    assert OTHER_INDEXES <= index_names(engine)
    assert all_rows(engine) == before  # every row, seq and body as they were
    db = StateDB(state_url)  # the schema check passes at the new head
    try:
        report = verify_db(db, signer.public_key, expect_checkpoint_every=10)
        assert report.ok and report.events == 45 and report.checkpoints == 4, report.summary()
        log = AuditLog(db, signer=signer, checkpoint_every=10)
        log.append_many([q(i) for i in range(45, 50)])  # the chain goes on where it was
        assert chained_queries(log) == [f"SELECT {i}" for i in range(50)]
        assert verify_db(db, signer.public_key).ok
    finally:
        db.dispose()


def test_downgrade_and_upgrade_round_trip(log_0001, engine, signer):
    upgrade(engine)
    before = all_rows(engine)

    migrate(engine, "0001", down=True)
    assert id_is_unique(engine)
    assert OTHER_INDEXES <= index_names(engine)
    assert all_rows(engine) == before
    first = json.loads(before[0][5])
    with pytest.raises(AuditUnavailable) as refused:  # the constraint is back: an id twice is refused
        log_0001.append(Event.from_dict(first))
    assert isinstance(refused.value.__cause__, Conflict)  # a unique constraint broke (StateDB.transaction)

    upgrade(engine)
    assert not id_is_unique(engine)
    assert OTHER_INDEXES <= index_names(engine)
    assert all_rows(engine) == before
    assert verify_db(log_0001.db, signer.public_key).ok


def test_models_match_the_migrations(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sdm_proxy.control.models import Base

    upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


# ---- known_ids -----------------------------------------------------------------------------------


def test_known_ids_finds_exactly_the_chained_ones(audit_log, monkeypatch):
    monkeypatch.setattr(reader_module, "READ_CHUNK", 7)  # the asked ts range spans several chunks
    chained = audit_log.append_many([q(i) for i in range(60)])
    strays = [q(100 + i) for i in range(4)]  # never chained, with ts before, among and after the chain
    strays[0].ts = "2000-01-01T00:00:00.000000Z"
    strays[1].ts = chained[20].ts
    strays[2].ts = chained[59].ts
    strays[3].ts = "2999-01-01T00:00:00.000000Z"

    asked = [chained[5], strays[0], chained[20], strays[1], chained[41], chained[59], strays[2], strays[3]]
    assert audit_log.known_ids(asked) == {chained[i].id for i in (5, 20, 41, 59)}
    assert audit_log.known_ids(chained[30:]) == {ev.id for ev in chained[30:]}
    assert audit_log.known_ids(strays) == set()
    assert audit_log.known_ids([strays[3]]) == set()  # nothing in the chain is that recent
    assert audit_log.known_ids([]) == set()


def test_known_ids_when_older_events_were_chained_after_newer_ones(audit_log, monkeypatch):
    """Two gateways chain into one log: ts does not follow seq, and ids must still be found."""
    monkeypatch.setattr(reader_module, "READ_CHUNK", 3)
    events = [q(i) for i in range(20)]  # ts in this order
    audit_log.append_many(events[10:])
    audit_log.append_many(events[:10])  # older ts, higher seq
    assert audit_log.known_ids([events[2], events[15], q(99)]) == {events[2].id, events[15].id}
    assert audit_log.known_ids(events) == {ev.id for ev in events}


# ---- spool recovery ------------------------------------------------------------------------------


def write_spool(directory, events: list[Event]) -> None:
    directory.mkdir(exist_ok=True)
    lines = [canonical_json(ev.body_dict()) for ev in events]
    (directory / "4242-dead.spool").write_text("\n".join(lines) + "\n")


def test_recovery_chains_each_event_once(audit_log, tmp_path, monkeypatch):
    import sdm_proxy.audit.spool as spool_module

    monkeypatch.setattr(reader_module, "READ_CHUNK", 4)
    monkeypatch.setattr(spool_module, "RECOVERY_BATCH", 5)
    events = [q(i) for i in range(30)]
    unlinked = [Event.from_dict(ev.body_dict()) for ev in events]  # what the spool holds
    audit_log.append_many(events[:12])  # chained before the crash; the spool was not cut yet
    spool = tmp_path / "spool"
    write_spool(spool, unlinked + [unlinked[20], unlinked[3]])  # a line twice, too

    assert recover_spools(spool, audit_log) == 18
    assert chained_queries(audit_log) == [f"SELECT {i}" for i in range(30)]
    assert verify_db(audit_log.db, audit_log.signer.public_key).ok

    write_spool(spool, unlinked)  # the same file again: all of it is in the chain
    assert recover_spools(spool, audit_log) == 0
    assert len(chained_queries(audit_log)) == 30
