"""Read-your-writes: ``AuditWriter.settled()`` returns once what was recorded is chained, and the
activity API waits for it, so `%sdm activity` right after a query shows that query."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sdm_proxy.audit.events import query_end_event, query_event
from sdm_proxy.audit.spool import AuditSpool
from sdm_proxy.wire.audit_settle import Settlement
from sdm_proxy.wire.audit_writer import AuditWriter

from tests.support.audit_log import chained_queries, sqlite_audit_log


def q(n: int):
    return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                       protocol="postgres", query=f"SELECT {n}", client={"addr": "127.0.0.1:5"})


@pytest.fixture
def audit_log(tmp_path):
    with sqlite_audit_log(tmp_path, checkpoint_every=50) as log:
        yield log


class HeldLog:
    """Commits wait for ``gate`` (the state database is slow)."""

    def __init__(self, log):
        self.log, self.gate = log, threading.Event()

    def append_spooled(self, records, only_new=False):
        self.gate.wait(10)
        return self.log.append_spooled(records, only_new=only_new)

    def append_many(self, events, only_new=False):
        self.gate.wait(10)
        return self.log.append_many(events, only_new=only_new)


def spool_writer(log, tmp_path, **kw) -> AuditWriter:
    spool = AuditSpool(tmp_path / "spool")
    spool.open()
    return AuditWriter(log, spool=spool, **kw)


def test_settled_sees_writes_and_posts_without_the_flush_interval(audit_log, tmp_path):
    async def main():
        # A flush interval far longer than the wait: only settled()'s nudge gets the chain going.
        writer = spool_writer(audit_log, tmp_path, flush_interval=30.0)
        await writer.write([q(1)])
        writer.post([query_end_event(q(1), rows=1, status="ok", duration_ms=1.0)])
        assert await writer.settled(timeout=5.0)
        types = [e.type for e in audit_log.iter_events()]
        await writer.aclose()
        return types

    assert asyncio.run(main()) == ["query", "query.end"]


def test_settled_is_bounded_while_the_chain_is_stuck(audit_log, tmp_path):
    held = HeldLog(audit_log)

    async def main():
        writer = spool_writer(held, tmp_path, flush_interval=0.001)
        await writer.write([q(1)])
        stuck = await writer.settled(timeout=0.2)
        held.gate.set()
        caught_up = await writer.settled(timeout=5.0)
        await writer.aclose()
        return stuck, caught_up

    assert asyncio.run(main()) == (False, True)
    assert chained_queries(audit_log) == ["SELECT 1"]


def test_settled_in_commit_mode_waits_for_posted_events(audit_log):
    held = HeldLog(audit_log)

    async def main():
        writer = AuditWriter(held, sync="commit", post_delay=0.001)
        writer.post([q(7)])
        stuck = await writer.settled(timeout=0.2)
        held.gate.set()
        caught_up = await writer.settled(timeout=5.0)
        await writer.aclose()
        return stuck, caught_up

    assert asyncio.run(main()) == (False, True)
    assert chained_queries(audit_log) == ["SELECT 7"]


def test_settlement_releases_waiters_in_order_of_their_targets():
    async def main():
        s = Settlement()
        s.enqueued(2)
        first = asyncio.ensure_future(s.wait(5.0))
        await asyncio.sleep(0)
        s.enqueued(3)
        second = asyncio.ensure_future(s.wait(5.0))
        await asyncio.sleep(0)
        s.finished(2)
        await asyncio.sleep(0)
        states = (first.done(), second.done())
        s.finished(3)
        return states, await first, await second, await s.wait(0.01)

    assert asyncio.run(main()) == ((True, False), True, True, True)


class FailingLog:
    """The state database is down: every commit fails (counted)."""

    def __init__(self):
        self.attempts = 0

    def append_spooled(self, records, only_new=False):
        self.attempts += 1
        raise OSError("state database down")


def test_readers_do_not_cut_a_retry_back_off_short(tmp_path):
    failing = FailingLog()

    async def main():
        writer = spool_writer(failing, tmp_path, flush_interval=0.001)
        await writer.write([q(1)])
        while failing.attempts == 0:
            await asyncio.sleep(0.005)
        for _ in range(20):  # 20 readers in ~0.4 s, while the writer backs off 0.05, 0.1, 0.2, ... s
            assert not await writer.settled(timeout=0.02)
        attempts = failing.attempts
        writer._closed = True  # stop retrying (the spool keeps the event); aclose would wait 5 s
        writer._worker.cancel()
        return attempts

    attempts = asyncio.run(main())
    assert attempts <= 6, f"{attempts} commit attempts in ~0.4 s: readers triggered retries"
