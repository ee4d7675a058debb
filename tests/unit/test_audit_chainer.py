"""The audit chainer process (``audit/chainer.py``): spooled records chained by a forked child over
a pipe, exactly once, with the chain verifying; errors come back as AuditUnavailable; a child that
dies hands chaining back to the parent without losing or doubling an event."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from sdm_proxy.audit import verify_db, verify_jsonl
from sdm_proxy.audit.chainer import CHAINER_GONE, ChainerProcess
from sdm_proxy.audit.events import query_end_event, query_event
from sdm_proxy.audit.records import Stamp, records_of
from sdm_proxy.audit.spool import AuditSpool
from sdm_proxy.errors import AuditUnavailable
from sdm_proxy.wire.audit_writer import AuditWriter

from tests.support.audit_log import chained_queries, sqlite_audit_log


def q(n: int):
    return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                       protocol="postgres", query=f"SELECT {n}", client={"addr": "127.0.0.1:5"})


@pytest.fixture
def audit_log(tmp_path):
    with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
        yield log


@pytest.fixture
def chainer(audit_log):
    ch = ChainerProcess.start(audit_log)
    assert ch is not None, "pytest's process runs no other thread here: the fork must happen"
    yield ch
    ch.close()


def verified(log, tmp_path, n: int) -> None:
    assert verify_db(log.db, log.signer.public_key).ok
    report = verify_jsonl(tmp_path / "audit.jsonl", tmp_path / "keys" / "audit-signing.pem", expect_head=log.head())
    assert report.ok and log.head()[0] == n, report.summary()


def _gone(pid: int, limit: float = 10.0) -> bool:
    """Exited (a zombie until multiprocessing reaps it, which it must do itself: no waitpid here)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def queries(log) -> list[str]:
    return [e.query for e in log.iter_events() if e.type == "query"]


def test_the_child_chains_what_the_parent_hands_it(chainer, audit_log, tmp_path):
    assert chainer.pid not in (None, os.getpid())
    assert Path(f"/proc/{chainer.pid}/comm").read_text().strip() == "sdm-audit-chain"
    events = [q(n) for n in range(20)]
    assert chainer.append_spooled(records_of(events[:12])) == 12
    assert chainer.append_spooled(records_of(events[12:])) == 8
    assert chained_queries(audit_log) == [f"SELECT {n}" for n in range(20)]  # read by the parent
    assert chainer.known_ids([Stamp(e.id, e.ts) for e in events[5:9]] + [Stamp(q(99).id, q(99).ts)]) == \
        {e.id for e in events[5:9]}
    verified(audit_log, tmp_path, 20)


def test_a_refused_batch_comes_back_as_audit_unavailable(chainer, audit_log):
    bad = list(records_of([q(1)])[0])
    bad[2] = "no such type!"
    with pytest.raises(AuditUnavailable, match="invalid audit event type"):
        chainer.append_spooled([tuple(bad)])
    assert chainer.append_spooled(records_of([q(2)])) == 1  # the child is still there
    assert chained_queries(audit_log) == ["SELECT 2"]


def test_close_stops_the_child(audit_log):
    ch = ChainerProcess.start(audit_log)
    pid = ch.pid
    ch.close()
    assert _gone(pid)
    assert ch.pid is None


def test_a_dead_child_hands_chaining_back_without_losing_or_doubling(chainer, audit_log, tmp_path):
    async def main():
        spool = AuditSpool(tmp_path / "spool")
        spool.open()
        writer = AuditWriter(chainer, spool=spool, flush_interval=0.001)
        for n in range(50):
            ev = q(n)
            await writer.write([ev])
            writer.post([query_end_event(ev, rows=1, status="ok", duration_ms=1.0)])
        assert await writer.settled(timeout=10)
        os.kill(chainer.pid, signal.SIGKILL)
        assert _gone(chainer.pid)
        for n in range(50, 100):
            await writer.write([q(n)])
        assert await writer.settled(timeout=10)
        await writer.aclose()
        return writer.failures

    failures = asyncio.run(main())
    assert failures >= 1  # the call that found the child gone failed, and was retried in-process
    assert queries(audit_log) == [f"SELECT {n}" for n in range(100)]
    verified(audit_log, tmp_path, 150)


def test_with_the_chainer_missing_the_gone_error_says_what_happens_next(chainer):
    os.kill(chainer.pid, signal.SIGKILL)
    assert _gone(chainer.pid)
    with pytest.raises(AuditUnavailable) as err:
        chainer.append_spooled(records_of([q(1)]))
    assert err.value.message == CHAINER_GONE
