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

    def append_many(self, events, bodies=None):
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
