"""The audit spool: statements wait for a write(2), the chain catches up in batches, and nothing is lost
when the database fails for a while or the gateway dies between the two."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from sdm_proxy.audit import AuditLog
from sdm_proxy.audit.events import query_event
from sdm_proxy.audit import spool as spool_module
from sdm_proxy.audit.spool import AuditSpool, recover_spools
from sdm_proxy.audit.verify import verify_db
from sdm_proxy.errors import AuditUnavailable
from sdm_proxy.wire.audit_writer import AuditWriter

from tests.support.audit_log import chained_queries, spool_lines, sqlite_audit_log

SPOOL_WRITE = spool_module._write  # the spool's one write(2) (tests patch it to fail)


def q(n: int):
    return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                       protocol="postgres", query=f"SELECT {n}")


@pytest.fixture
def audit_log(tmp_path):
    with sqlite_audit_log(tmp_path, checkpoint_every=10) as log:
        yield log


class GatedLog:
    """An AuditLog whose commits can be held back or made to fail."""

    def __init__(self, log: AuditLog):
        self.log = log
        self.gate = threading.Event()
        self.gate.set()
        self.failures_left = 0

    def append_spooled(self, records, only_new=False):
        self.gate.wait(10)
        if self.failures_left:
            self.failures_left -= 1
            raise AuditUnavailable("audit log unavailable: test outage; the action was refused")
        return self.log.append_spooled(records, only_new=only_new)


def test_write_returns_once_spooled_and_the_chain_catches_up(audit_log, tmp_path):
    gated = GatedLog(audit_log)
    spool_dir = tmp_path / "spool"

    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(gated, spool=spool, flush_interval=0.001)
        gated.gate.clear()  # the chain is stuck ...
        for n in range(5):
            await writer.write([q(n)])  # ... yet every write returns
        assert [line["query"] for line in spool_lines(spool_dir)] == [f"SELECT {n}" for n in range(5)]
        assert chained_queries(audit_log) == []
        gated.gate.set()
        await writer.aclose()

    asyncio.run(main())
    assert chained_queries(audit_log) == [f"SELECT {n}" for n in range(5)]
    assert list(spool_dir.glob("*.spool")) == [], "a fully chained spool is removed on close"
    assert verify_db(audit_log.db, audit_log.signer.public_key).ok


def test_a_failing_database_loses_nothing_and_keeps_order(audit_log, tmp_path):
    gated = GatedLog(audit_log)
    gated.failures_left = 3

    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(gated, spool=spool, flush_interval=0.001)
        for n in range(20):
            await writer.write([q(n)])
            writer.post([q(100 + n)])
        await writer.aclose()
        return writer.failures

    failures = asyncio.run(main())
    assert failures == 3
    queries = chained_queries(audit_log)
    assert sorted(queries) == sorted([f"SELECT {n}" for n in range(20)] + [f"SELECT {100 + n}" for n in range(20)])
    assert [x for x in queries if int(x.split()[1]) < 100] == [f"SELECT {n}" for n in range(20)]


def test_a_full_backlog_makes_statements_wait_for_the_chain(audit_log, tmp_path):
    """Bounded memory: past max_backlog queued events a statement waits (backpressure) instead of
    queueing more; it goes on as soon as the chain catches up."""
    gated = GatedLog(audit_log)

    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(gated, spool=spool, flush_interval=0.001, max_backlog=5)
        gated.gate.clear()
        for n in range(5):
            await writer.write([q(n)])
        sixth = asyncio.create_task(writer.write([q(5)]))
        await asyncio.sleep(0.2)
        assert not sixth.done(), "the sixth statement waits while five events are queued"
        gated.gate.set()
        await asyncio.wait_for(sixth, 10)
        await writer.aclose()

    asyncio.run(main())
    assert chained_queries(audit_log) == [f"SELECT {n}" for n in range(6)]


def test_the_backlog_is_bounded_by_its_text_too(audit_log, tmp_path):
    """A statement's record can hold 1 MiB of text, so a count of records alone does not bound the
    memory: past ``max_backlog_chars`` of queued text statements wait as well."""
    gated = GatedLog(audit_log)

    def big(n: int):
        return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                           protocol="postgres", query=f"SELECT {n} /*{'x' * 4000}*/")

    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(gated, spool=spool, flush_interval=0.001, max_backlog=1000, max_backlog_chars=10_000)
        gated.gate.clear()
        for n in range(3):  # about 12,500 characters of bodies: past the bound, under the count
            await writer.write([big(n)])
        fourth = asyncio.create_task(writer.write([big(3)]))
        await asyncio.sleep(0.2)
        assert not fourth.done(), "the fourth statement waits while 3 big records fill the backlog"
        gated.gate.set()
        await asyncio.wait_for(fourth, 10)
        await writer.aclose()
        return writer._queued_chars

    assert asyncio.run(main()) == 0  # every chained record's text was counted off again
    assert [x.split(" /*")[0] for x in chained_queries(audit_log)] == [f"SELECT {n}" for n in range(4)]


def test_a_long_outage_refuses_new_statements_once_the_backlog_is_full(audit_log, tmp_path, monkeypatch):
    import sdm_proxy.wire.audit_writer as writer_mod

    monkeypatch.setattr(writer_mod, "CATCH_UP_WAIT", 0.3)
    gated = GatedLog(audit_log)
    gated.failures_left = 10**6

    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(gated, spool=spool, flush_interval=0.001, max_backlog=5)
        for n in range(5):
            await writer.write([q(n)])
        with pytest.raises(AuditUnavailable, match="5 events wait for the state database, which is not keeping up"):
            await writer.write([q(5)])
        gated.failures_left = 0
        await writer.aclose()

    asyncio.run(main())
    assert chained_queries(audit_log) == [f"SELECT {n}" for n in range(5)]


def test_a_spool_that_cannot_be_written_refuses_and_leaves_no_torn_line(audit_log, tmp_path, monkeypatch):
    spool_dir = tmp_path / "spool"

    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(audit_log, spool=spool, flush_interval=60)
        await writer.write([q(0)])
        real_write = os.write
        calls = []

        def half_then_full(fd, data):
            calls.append(len(data))
            if len(calls) == 1:
                return real_write(fd, bytes(data[:7]))  # a short write ...
            raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

        monkeypatch.setattr(spool_module, "_write", half_then_full)
        with pytest.raises(AuditUnavailable, match="cannot write the audit spool .*No space left"):
            await writer.write([q(1)])
        monkeypatch.setattr(spool_module, "_write", SPOOL_WRITE)
        assert [line["query"] for line in spool_lines(spool_dir)] == ["SELECT 0"]
        await writer.aclose()

    asyncio.run(main())
    assert chained_queries(audit_log) == ["SELECT 0"]


def test_fsync_mode_waits_for_the_spool_to_reach_the_disk(audit_log, tmp_path):
    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(audit_log, spool=spool, sync="fsync", flush_interval=60)
        await asyncio.gather(*(writer.write([q(n)]) for n in range(10)))
        assert not spool.needs_sync(spool.mark)
        await writer.aclose()

    asyncio.run(main())
    assert len(chained_queries(audit_log)) == 10


def test_commit_mode_needs_no_spool(audit_log):
    async def main():
        writer = AuditWriter(audit_log, sync="commit")
        await writer.write([q(1)])
        assert chained_queries(audit_log) == ["SELECT 1"]  # chained before write returned
        await writer.aclose()

    asyncio.run(main())


def test_recovery_chains_what_a_killed_gateway_left_and_skips_live_spools(audit_log, tmp_path):
    spool_dir = tmp_path / "spool"
    child = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        sys.path[:0] = {sys.path!r}
        from sdm_proxy.audit.events import query_event
        from sdm_proxy.audit.spool import AuditSpool
        from sdm_proxy.wire.audit_writer import AuditWriter

        class NeverCommits:
            def append_spooled(self, records, only_new=False):
                import time; time.sleep(3600)

        async def main():
            spool = AuditSpool({str(spool_dir)!r})
            spool.open()
            writer = AuditWriter(NeverCommits(), spool=spool, flush_interval=0.001)
            for n in range(25):
                await writer.write([query_event(user="u", session_id="s", proxy_id="p", datasource="d",
                                    credential="c", db_user="x", protocol="postgres", query=f"SELECT {{n}}")])
            print("written", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "written" in proc.stdout, proc.stderr

    live = AuditSpool(spool_dir)  # a running gateway's spool: held, so recovery must leave it alone
    live.open()
    live.append([q(999)])
    # One event of the dead spool had reached the chain before the kill: it is not added twice.
    [first] = [line for line in spool_lines(spool_dir) if line["query"] == "SELECT 0"]
    from sdm_proxy.audit.events import Event
    audit_log.append(Event.from_dict(first))

    added = recover_spools(spool_dir, audit_log)
    assert added == 24
    assert chained_queries(audit_log) == [f"SELECT {n}" for n in range(25)]
    assert verify_db(audit_log.db, audit_log.signer.public_key).ok
    assert [line["query"] for line in spool_lines(spool_dir)] == ["SELECT 999"], "the live spool stays"
    live.close()


def test_recovery_drops_a_torn_last_line(audit_log, tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = json.dumps(q(1).body_dict())
    (spool_dir / "123-dead.spool").write_text(good + "\n" + good[:40])
    assert recover_spools(spool_dir, audit_log) == 1
    assert chained_queries(audit_log) == ["SELECT 1"]
    assert list(spool_dir.glob("*.spool")) == []


def test_segments_roll_and_are_removed_once_chained(audit_log, tmp_path, monkeypatch):
    import sdm_proxy.audit.spool as spool_mod

    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 2000)
    spool_dir = tmp_path / "spool"

    async def main():
        spool = AuditSpool(spool_dir)
        spool.open()
        writer = AuditWriter(audit_log, spool=spool, flush_interval=60, max_batch=10**6)
        for n in range(40):
            await writer.write([q(n)])
        assert len(list(spool_dir.glob("*.spool"))) > 2
        await writer.aclose()

    asyncio.run(main())
    assert chained_queries(audit_log) == [f"SELECT {n}" for n in range(40)]
    assert list(spool_dir.glob("*.spool")) == []


def test_spliced_bodies_equal_a_fresh_serialisation(audit_log):
    """The chain links spooled bodies by splicing prev_hash in; the result must be byte-identical to
    serialising the linked event, or verification would fail (and tampering could hide)."""
    from sdm_proxy.audit.events import canonical_json

    tricky = [q(1), q(2)]
    tricky[1].query = 'SELECT \'"id":"x","prev_hash":null\' -- ' + tricky[1].id  # the anchor text as data
    tricky[0].details = {"prepared_statement": "s1"}
    bodies = [canonical_json(ev.body_dict()) for ev in tricky]
    audit_log.append_many(tricky, bodies)
    for ev in tricky:
        assert canonical_json(ev.body_dict()) in {r.body for r in _rows(audit_log)}
    assert verify_db(audit_log.db, audit_log.signer.public_key).ok


def _rows(log: AuditLog):
    from sqlalchemy import text

    with log.db.transaction() as s:
        return s.execute(text("SELECT body FROM audit_events")).all()


def test_a_chained_mark_needs_no_fsync_even_after_the_spool_starts_over(tmp_path):
    """fsync mode waits until its mark is synced. If the chain got there first and the spool was
    truncated (offsets restart at 0), that wait must end, not fsync forever."""
    spool = AuditSpool(tmp_path / "spool")
    spool.open()
    first = spool.append([q(1)])
    spool.chained(first)  # chained before anybody fsynced: the file starts over
    assert not spool.needs_sync(first)
    second = spool.append([q(2)])
    assert spool.needs_sync(second) and second > first, "marks keep growing after the restart"
    spool.sync()
    assert not spool.needs_sync(second)
    third = spool.append([q(3), q(4)])
    spool.chained(second)  # not everything: nothing is cut
    assert spool.needs_sync(third) and [line["query"] for line in spool_lines(tmp_path / "spool")] == [
        "SELECT 2", "SELECT 3", "SELECT 4"]
    spool.close()


def test_fsync_mode_with_a_chain_faster_than_the_fsync(audit_log, tmp_path):
    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(audit_log, spool=spool, sync="fsync", flush_interval=0)
        for round_ in range(20):
            await asyncio.wait_for(asyncio.gather(*(writer.write([q(round_ * 10 + n)]) for n in range(10))), 10)
        await writer.aclose()

    asyncio.run(main())
    assert len(chained_queries(audit_log)) == 200


def test_the_spool_write_keeps_the_gil_and_reports_errors_like_os_write(tmp_path):
    # On Linux the spool writes through libc without releasing the GIL (spool._write's docstring).
    assert spool_module._c_write is not None
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        assert spool_module._write(fd, b"one\n") == 4
        assert spool_module._write(fd, bytearray(b"two\n")) == 4  # not bytes: through os.write
        big = b"x" * (spool_module.GIL_WRITE_MAX + 1)  # too big to hold the GIL for: os.write
        assert spool_module._write(fd, big) == len(big)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"one\ntwo\n" + big
    read_only = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as caught:
            spool_module._write(read_only, b"not writable\n")
    finally:
        os.close(read_only)
    assert caught.value.errno == errno.EBADF

