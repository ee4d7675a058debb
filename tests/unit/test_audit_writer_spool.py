"""The gateway's audit path at speed: post()ed outcomes share the next write(2), a worker thread
drains the queue batch after batch, spooled records are chained without Event objects, and SQLite
gets them in few multi-row statements. None of it may lose, reorder or tear an event."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
from pathlib import Path

import pytest
from sdm_proxy.audit import AuditLog, CheckpointSigner, store, verify_db, verify_jsonl
from sdm_proxy.audit import sink as sink_module
from sdm_proxy.audit.events import query_end_event, query_event
from sdm_proxy.audit import spool as spool_module
from sdm_proxy.audit.spool import AuditSpool
from sdm_proxy.control.db import StateDB, make_engine, upgrade
from sdm_proxy.errors import AuditUnavailable
from sdm_proxy.audit.records import records_of
from sdm_proxy.wire.audit_writer import AuditWriter

from tests.support.audit_log import chained_queries, spool_lines, sqlite_audit_log

SPOOL_WRITE = spool_module._write  # the spool's one write(2) (tests patch it to fail)


def q(n: int):
    return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                       protocol="postgres", query=f"SELECT {n}", client={"addr": "127.0.0.1:5"})


@pytest.fixture
def audit_log(tmp_path):
    with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
        yield log


def spooled(directory: Path) -> list[str]:
    return [line["query"] for line in spool_lines(directory)]


def verified(log: AuditLog, tmp_path: Path, n: int) -> None:
    assert verify_db(log.db, log.signer.public_key).ok
    report = verify_jsonl(tmp_path / "audit.jsonl", tmp_path / "keys" / "audit-signing.pem", expect_head=log.head())
    assert report.ok and log.head()[0] == n, report.summary()


def test_a_posted_outcome_rides_with_the_next_write(audit_log, tmp_path, monkeypatch):
    spool_dir = tmp_path / "spool"
    writes = []
    real_write = os.write

    def counting_write(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)

    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(audit_log, spool=spool, flush_interval=60)
        monkeypatch.setattr(spool_module, "_write", counting_write)
        await writer.write([q(0)])
        writer.post([q(100)])
        assert spooled(spool_dir) == ["SELECT 0"], "not yet written ..."
        await writer.write([q(1)])
        assert len(writes) == 2 and spooled(spool_dir) == ["SELECT 0", "SELECT 100", "SELECT 1"]
        writer.post([q(101)])
        await asyncio.sleep(0)  # ... or at the end of the loop's pass
        assert len(writes) == 3 and spooled(spool_dir)[-1] == "SELECT 101"
        monkeypatch.setattr(spool_module, "_write", SPOOL_WRITE)
        await writer.aclose()

    asyncio.run(main())
    assert chained_queries(audit_log) == ["SELECT 0", "SELECT 100", "SELECT 1", "SELECT 101"]
    verified(audit_log, tmp_path, 4)


def test_a_failed_shared_write_refuses_only_the_statement_and_keeps_the_outcome(audit_log, tmp_path, monkeypatch,
                                                                                 caplog):
    spool_dir = tmp_path / "spool"

    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(audit_log, spool=spool, flush_interval=60)
        await writer.write([q(0)])
        writer.post([q(100)])  # waits for the next write(2) ...
        real_write = os.write

        def torn(fd, data):
            real_write(fd, bytes(data[:25]))
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(spool_module, "_write", torn)
        with pytest.raises(AuditUnavailable, match="No space left"):
            await writer.write([q(1)])  # ... which fails: this statement is refused
        monkeypatch.setattr(spool_module, "_write", SPOOL_WRITE)
        assert spooled(spool_dir) == ["SELECT 0"], "no torn line is left in the spool"
        await writer.aclose()

    with caplog.at_level(logging.ERROR, logger="sdm.wire.audit"):
        asyncio.run(main())
    assert "could not spool 1 after-the-fact audit event(s)" in caplog.text
    assert chained_queries(audit_log) == ["SELECT 0", "SELECT 100"], "the outcome reached the chain from memory"


class SlowLog:
    """Holds the first batch until released, to let a backlog build up."""

    def __init__(self, log: AuditLog):
        self.log = log
        self.gate = threading.Event()
        self.batches: list[int] = []

    def append_spooled(self, records, only_new=False):
        self.gate.wait(10)
        self.batches.append(len(records))
        return self.log.append_spooled(records, only_new=only_new)


def test_the_worker_drains_batch_after_batch_in_order_and_trims_the_spool(audit_log, tmp_path):
    spool_dir = tmp_path / "spool"
    slow = SlowLog(audit_log)

    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(slow, spool=spool, flush_interval=0.001, max_batch=4, max_backlog=100)
        for n in range(30):
            ev = q(n)
            await writer.write([ev])
            writer.post([query_end_event(ev, duration_ms=0.5, rows=1)])
            if n == 0:
                await asyncio.sleep(0.05)  # the worker has taken the first batch and waits at the gate
        slow.gate.set()
        await writer.aclose()
        return writer.chained

    assert asyncio.run(main()) == 60
    assert max(slow.batches) == 4 and sum(slow.batches) == 60
    events = list(audit_log.iter_events())
    assert [e.query for e in events if e.type == "query"] == [f"SELECT {n}" for n in range(30)]
    for start, end in zip(events[::2], events[1::2]):
        assert end.type == "query.end" and end.details == {"query_event_id": start.id}
    assert list(spool_dir.glob("*.spool")) == []
    verified(audit_log, tmp_path, 60)


def test_spooled_records_chain_like_events(audit_log, tmp_path):
    """append_spooled splices the link into the spooled body; a body of another shape (a stale
    prev_hash, say) is serialised anew. Either way the chain verifies and holds the same event."""
    evs = [q(n) for n in range(5)]
    records = records_of(evs)
    stale = json.loads(records[2][4])
    stale["prev_hash"] = "ab" * 32
    records[2] = records[2][:4] + (json.dumps(stale, sort_keys=True, separators=(",", ":"), ensure_ascii=False),)
    assert audit_log.append_spooled(records) == 5
    stored = list(audit_log.iter_events())
    assert [(e.id, e.ts, e.query, e.client.addr) for e in stored] == [(e.id, e.ts, e.query, e.client.addr) for e in evs]
    assert stored[2].prev_hash == stored[1].hash
    verified(audit_log, tmp_path, 5)


def test_spooled_records_are_validated_before_anything_is_written(audit_log, tmp_path):
    records = records_of([q(1)])
    with pytest.raises(AuditUnavailable, match="invalid audit event type"):
        audit_log.append_spooled(records + [("id", "ts", "audit.checkpoint", None, "{}")])
    with pytest.raises(AuditUnavailable, match="without id or ts"):
        audit_log.append_spooled([(None, "ts", "query", None, "{}")])
    assert chained_queries(audit_log) == []


def test_a_sink_failure_after_the_commit_is_logged_not_retried(audit_log, tmp_path, monkeypatch, caplog):
    """The records are in the database: raising would make the writer chain them a second time."""
    audit_log.append_spooled(records_of([q(0)]))

    def enospc(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sink_module.os, "write", enospc)
    with caplog.at_level(logging.WARNING, logger="sdm.audit"):
        assert audit_log.append_spooled(records_of([q(1), q(2)])) == 2
    monkeypatch.undo()
    assert "No space left on device" in caplog.text
    assert chained_queries(audit_log) == ["SELECT 0", "SELECT 1", "SELECT 2"]
    audit_log.append_spooled(records_of([q(3)]))  # the sink catches up
    verified(audit_log, tmp_path, 4)


@pytest.mark.parametrize("sizes", [None, (8, 3)])
def test_multi_row_inserts_cut_any_batch_size(audit_log, tmp_path, monkeypatch, sizes):
    if sizes is not None:
        monkeypatch.setattr(store, "_sizes", sizes)
    total = 0
    for n in (1, 2, 3, 7, 8, 9, 17, 25, 1500):
        audit_log.append_spooled(records_of([q(total + i) for i in range(n)]))
        total += n
    assert chained_queries(audit_log) == [f"SELECT {i}" for i in range(total)]
    verified(audit_log, tmp_path, total)


@pytest.mark.postgres
def test_the_spool_path_on_postgres_state(pg_cluster, tmp_path):
    """Scale-out state: the same writer path goes through SQLAlchemy Core inserts on PostgreSQL."""
    import secrets

    import psycopg

    name = f"sdm_state_{secrets.token_hex(4)}"
    with psycopg.connect(**{**pg_cluster.connect_kwargs("bootstrap"), "dbname": "postgres"}, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = (f"postgresql+psycopg://{pg_cluster.superuser}:{pg_cluster.superuser_password}@{pg_cluster.host}:"
           f"{pg_cluster.port}/{name}")
    upgrade(make_engine(url, create=True))
    db = StateDB(url)
    signer = CheckpointSigner.load_or_create(tmp_path / "keys" / "audit-signing.pem")
    log = AuditLog(db, jsonl_path=tmp_path / "audit.jsonl", signer=signer, checkpoint_every=7)

    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(log, spool=spool, flush_interval=0.001, max_batch=16)
        for n in range(40):
            ev = q(n)
            await writer.write([ev])
            writer.post([query_end_event(ev, duration_ms=1.25, rows=n)])
        await writer.aclose()

    try:
        asyncio.run(main())
        assert [e.query for e in log.iter_events() if e.type == "query"] == [f"SELECT {n}" for n in range(40)]
        verified(log, tmp_path, 80)
    finally:
        db.dispose()


def test_a_given_body_is_not_trusted_for_an_event_that_already_has_a_prev_hash(audit_log, tmp_path):
    from sdm_proxy.audit.events import canonical_json

    evs = [q(1), q(2)]
    bodies = [canonical_json(e.body_dict()) for e in evs]
    evs[1].prev_hash = "cd" * 32  # set after its body was serialised: the body must be made anew
    audit_log.append_many(evs, bodies)
    assert [e.prev_hash for e in audit_log.iter_events()] == [evs[0].prev_hash, evs[0].hash]
    verified(audit_log, tmp_path, 2)


class CommitsThenFails:
    """An AuditLog whose first append commits and then reports a failure (a connection lost in the
    middle of COMMIT): the writer cannot tell, retries, and must not chain those events twice."""

    def __init__(self, log: AuditLog):
        self.log, self.failed = log, False

    def append_spooled(self, records, only_new=False):
        chained = self.log.append_spooled(records, only_new=only_new)
        if not self.failed:
            self.failed = True
            raise AuditUnavailable("audit log unavailable: connection lost during commit; the action was refused")
        return chained


def _write_then_retry(log, spool_dir: Path, queries: int, *, outcomes: bool) -> int:
    """Record ``queries`` statements (and their outcomes) through a spooling writer over ``log``,
    give a failed first batch time to be retried (after 50 ms), close; the writer's failures."""
    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(log, spool=spool, flush_interval=0.001)
        for n in range(queries):
            ev = q(n)
            await writer.write([ev])
            if outcomes:
                writer.post([query_end_event(ev, duration_ms=0.5, rows=1)])
        await asyncio.sleep(0.3)
        await writer.aclose()
        return writer.failures

    return asyncio.run(main())


def test_a_batch_retried_after_a_failed_commit_is_not_chained_twice(audit_log, tmp_path, caplog):
    flaky = CommitsThenFails(audit_log)
    with caplog.at_level(logging.WARNING, logger="sdm.wire.audit"):
        assert _write_then_retry(flaky, tmp_path / "spool", 10, outcomes=True) == 1
    assert flaky.failed
    events = list(audit_log.iter_events())
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)) == 20
    assert [e.query for e in events if e.type == "query"] == [f"SELECT {n}" for n in range(10)]
    assert "chained after all" in caplog.text
    verified(audit_log, tmp_path, 20)


class LateCommit:
    """The first append fails without committing, but its COMMIT lands later (another connection
    of a pool still holding it): right before the retry's own transaction. The retry must see it,
    so its check for what the chain holds has to happen under the chain's lock, not before."""

    def __init__(self, log: AuditLog):
        self.log, self.late = log, None

    def append_spooled(self, records, only_new=False):
        if self.late is None:
            self.late = list(records)
            raise AuditUnavailable("audit log unavailable: connection lost during commit; the action was refused")
        if self.late:
            self.log.append_spooled(self.late)  # the lost COMMIT completes now
            self.late = []
        return self.log.append_spooled(records, only_new=only_new)


def test_a_retry_checks_for_a_late_commit_under_the_chains_lock(audit_log, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert _write_then_retry(LateCommit(audit_log), tmp_path / "spool", 5, outcomes=False) == 1
    ids = [e.id for e in audit_log.iter_events()]
    assert len(ids) == len(set(ids)) == 5
    assert "chained after all" in caplog.text
    verified(audit_log, tmp_path, 5)


def test_append_only_new_skips_what_the_chain_holds_and_says_how_many_it_chained(audit_log):
    evs = [q(n) for n in range(4)]
    audit_log.append_many(evs[:2])
    records = records_of(evs)
    assert audit_log.append_spooled(records, only_new=True) == 2
    assert audit_log.append_spooled(records, only_new=True) == 0
    again = [q(9)]
    again[0].id, again[0].ts = evs[3].id, evs[3].ts
    assert audit_log.append_many(again, only_new=True)[0].seq is None  # held already: not chained
    assert [e.query for e in audit_log.iter_events()] == [f"SELECT {n}" for n in range(4)]


def test_an_event_that_can_never_be_chained_is_refused_or_dropped_and_nothing_stalls(audit_log, tmp_path, caplog):
    """An unknown event type (a bug) would fail its batch on every retry and stall the queue behind
    it: write() refuses it (its statement does not run), post() logs and drops it."""
    spool_dir = tmp_path / "spool"

    def bad(n: int):
        ev = q(n)
        ev.type = "query.bogus"
        return ev

    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(audit_log, spool=spool, flush_interval=0.001)
        with pytest.raises(AuditUnavailable, match="invalid audit event type 'query.bogus'"):
            await writer.write([bad(0)])
        good = q(1)
        await writer.write([good])
        writer.post([bad(2), query_end_event(good, duration_ms=0.5, rows=1)])
        await writer.write([q(3)])
        await writer.aclose()
        return writer.failures

    with caplog.at_level(logging.ERROR, logger="sdm.wire.audit"):
        assert asyncio.run(main()) == 0
    events = list(audit_log.iter_events())
    assert [(e.type, e.query) for e in events] == [("query", "SELECT 1"), ("query.end", None), ("query", "SELECT 3")]
    assert "not recorded: invalid audit event type 'query.bogus'" in caplog.text
    verified(audit_log, tmp_path, 3)
