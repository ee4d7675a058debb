"""The shared batching audit writer: group commit, fail closed, posted outcomes ride along."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sdm_proxy.audit.events import query_event
from sdm_proxy.errors import AuditUnavailable
from sdm_proxy.wire.audit_writer import AuditWriter
from sdm_proxy.wire.sqlcomment import parse_tags


def _event(n: int):
    return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                       protocol="postgres", query=f"SELECT {n}")


class RecordingLog:
    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.fail = False
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def append_many(self, events, bodies=None, only_new=False):
        self.gate.wait(5)
        if self.fail:
            raise AuditUnavailable("audit log unavailable: test; the action was refused")
        if self.delay:
            import time
            time.sleep(self.delay)
        self.batches.append(list(events))
        return events


def test_concurrent_writes_share_commits_and_keep_order():
    log = RecordingLog()

    async def main():
        writer = AuditWriter(log)
        log.gate.clear()  # hold the first commit so the others queue up behind it
        first = asyncio.create_task(writer.write([_event(0)]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(writer.write([_event(i)])) for i in range(1, 50)]
        await asyncio.sleep(0.05)
        log.gate.set()
        await asyncio.gather(first, *rest)
        await writer.aclose()

    asyncio.run(main())
    assert len(log.batches) == 2, "49 writers queued behind one commit share the next one"
    queries = [e.query for batch in log.batches for e in batch]
    assert queries == [f"SELECT {i}" for i in range(50)]


def test_a_failed_commit_refuses_every_waiter():
    log = RecordingLog()
    log.fail = True

    async def main():
        writer = AuditWriter(log)
        results = await asyncio.gather(*(writer.write([_event(i)]) for i in range(5)), return_exceptions=True)
        await writer.aclose()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, AuditUnavailable) for r in results)


def test_posted_outcomes_wait_for_the_next_write_and_are_flushed_on_close():
    log = RecordingLog()

    async def main():
        writer = AuditWriter(log, post_delay=5)
        writer.post([_event(1)])
        await asyncio.sleep(0.05)
        assert log.batches == [], "a lone outcome waits for company"
        await writer.write([_event(2)])
        assert [e.query for e in log.batches[0]] == ["SELECT 1", "SELECT 2"]
        writer.post([_event(3)])
        await writer.aclose()

    asyncio.run(main())
    assert [e.query for e in log.batches[-1]] == ["SELECT 3"]


class FlakyCommits:
    """A real SQLite audit log whose next ``fail`` appends fail; with ``committed`` they fail only
    after their COMMIT (a connection lost mid-commit: the writer cannot tell)."""

    def __init__(self, log, fail: int = 0, committed: bool = False):
        self.log, self.fail, self.committed = log, fail, committed

    def append_many(self, events, bodies=None, only_new=False):
        if self.fail:
            self.fail -= 1
            if self.committed:
                self.log.append_many(events, only_new=only_new)
            raise AuditUnavailable("audit log unavailable: test outage; the action was refused")
        return self.log.append_many(events, only_new=only_new)


@pytest.mark.parametrize("committed", [False, True], ids=["not-committed", "committed-anyway"])
def test_commit_mode_retries_the_outcomes_of_a_failed_batch_and_refuses_its_statements(tmp_path, committed, caplog):
    """An outcome (query.end, session.end) records what already happened: a failed batch must not
    drop it. The statement waiting on the same batch is refused (it never runs)."""
    from sdm_proxy.audit.events import query_end_event

    from tests.support.audit_log import sqlite_audit_log

    with sqlite_audit_log(tmp_path, checkpoint_every=1000) as real:
        flaky = FlakyCommits(real)

        async def main():
            writer = AuditWriter(flaky, post_delay=0.01)
            ran = _event(0)
            await writer.write([ran])
            flaky.fail, flaky.committed = 2, committed
            writer.post([query_end_event(ran, duration_ms=1.0, rows=1)])
            with pytest.raises(AuditUnavailable):
                await writer.write([_event(1)])  # shares the failing batch: refused
            await asyncio.sleep(0.4)  # retried after 50 ms, then 100 ms: the second retry works
            await writer.aclose()
            return writer.failures

        with caplog.at_level("WARNING"):
            assert asyncio.run(main()) == 2
        events = list(real.iter_events())
    types = [e.type for e in events]
    if committed:  # the first failed batch did commit, "SELECT 1" with it (a record of an attempt)
        assert types == ["query", "query.end", "query"]
        assert "chained after all" in caplog.text
    else:
        assert types == ["query", "query.end"]
    assert "after-the-fact audit events not yet chained" in caplog.text


def test_commit_mode_drops_outcomes_past_the_backlog_while_the_chain_is_down(tmp_path, caplog):
    from tests.support.audit_log import sqlite_audit_log

    with sqlite_audit_log(tmp_path, checkpoint_every=1000) as real:
        flaky = FlakyCommits(real, fail=1)

        async def main():
            writer = AuditWriter(flaky, post_delay=0.01, max_backlog=3)
            writer.post([_event(n) for n in range(2)])
            writer.post([_event(n) for n in range(2, 4)])  # 4 events: only the first 2 fit in 3
            await asyncio.sleep(0.3)
            await writer.aclose()

        with caplog.at_level("WARNING"):
            asyncio.run(main())
        assert [e.query for e in real.iter_events()] == ["SELECT 0", "SELECT 1"]
    assert "could not record 2 audit event(s) after the fact" in caplog.text


def test_commit_mode_leaves_out_an_outcome_that_can_never_be_chained(tmp_path, caplog):
    """Review: commit mode's post() skipped the check spool mode makes, and the retries added here
    put such an event back after every failure: every later statement was refused."""
    from tests.support.audit_log import sqlite_audit_log

    with sqlite_audit_log(tmp_path, checkpoint_every=1000) as real:
        async def main():
            writer = AuditWriter(real, post_delay=0.01)
            bad = _event(0)
            bad.type = "query.bogus"
            writer.post([bad])
            for n in range(1, 4):
                await writer.write([_event(n)])
            await writer.aclose()

        with caplog.at_level("ERROR"):
            asyncio.run(main())
        assert [e.query for e in real.iter_events()] == ["SELECT 1", "SELECT 2", "SELECT 3"]
    assert "not recorded: invalid audit event type" in caplog.text


class RefusesOne(FlakyCommits):
    """The database refuses every batch holding one particular event (a value it cannot store)."""

    def __init__(self, log, poison_id: str):
        super().__init__(log)
        self.poison_id, self.batches = poison_id, []

    def append_many(self, events, bodies=None, only_new=False):
        events = list(events)
        self.batches.append([e.id for e in events])
        if any(e.id == self.poison_id for e in events):
            raise AuditUnavailable("audit log unavailable: value too long (test); the action was refused")
        return self.log.append_many(events, only_new=only_new)


def test_commit_mode_retries_an_outcome_on_its_own_and_gives_up_in_the_end(tmp_path, monkeypatch, caplog):
    """A retried outcome goes in a batch of its own, so statements waiting to run are not refused
    with it; one that keeps failing is given up on after POSTED_RETRY_FOR."""
    from sdm_proxy.wire import audit_chaining

    from tests.support.audit_log import sqlite_audit_log

    monkeypatch.setattr(audit_chaining, "POSTED_RETRY_FOR", 0.3)
    with sqlite_audit_log(tmp_path, checkpoint_every=1000) as real:
        poison = _event(0)
        db = RefusesOne(real, poison.id)

        async def main():
            writer = AuditWriter(db, post_delay=0.01)
            writer.post([poison])
            await asyncio.sleep(0.05)  # its first batch fails
            for n in range(1, 4):
                await writer.write([_event(n)])  # never in a batch with it: all three run
            await asyncio.sleep(1.0)
            await writer.aclose()

        with caplog.at_level("ERROR"):
            asyncio.run(main())
        assert [e.query for e in real.iter_events()] == ["SELECT 1", "SELECT 2", "SELECT 3"]
    mixed = [b for b in db.batches if poison.id in b and len(b) > 1]
    assert not mixed[1:], db.batches  # only its very first batch could hold others
    assert "giving up on 1 after-the-fact audit event(s)" in caplog.text


def test_writes_after_close_are_refused():
    async def main():
        writer = AuditWriter(RecordingLog())
        await writer.aclose()
        with pytest.raises(AuditUnavailable):
            await writer.write([_event(1)])

    asyncio.run(main())


def test_sqlcomment_ignores_unknown_keys_and_bounds_values():
    tags = parse_tags("SELECT 1 /*sdm_cell='" + "x" * 5000 + "',route='%2Fhome'*/")
    assert set(tags) == {"cell_id"} and len(tags["cell_id"]) == 1024
