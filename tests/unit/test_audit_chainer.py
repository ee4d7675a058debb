"""The audit chainer process (``audit/chainer.py``): spooled records chained by a forked child over
a pipe, exactly once, with the chain verifying; errors come back as AuditUnavailable; a child that
dies hands chaining back to the parent without losing or doubling an event.

The gateway forks its chainer before any thread runs, and ``ChainerProcess.start`` refuses to fork
otherwise. pytest's process runs threads of other tests' fixtures, so each scenario runs in a freshly
spawned interpreter (``in_fresh_process``); its assertion errors fail the test with their traceback
on stderr.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from pathlib import Path

from sdm_proxy.audit import verify_db, verify_jsonl
from sdm_proxy.audit.chainer import CHAINER_GONE, ChainerProcess
from sdm_proxy.audit.events import query_end_event, query_event
from sdm_proxy.audit.records import Stamp, records_of
from sdm_proxy.audit.spool import AuditSpool
from sdm_proxy.errors import AuditUnavailable
from sdm_proxy.wire.audit_writer import AuditWriter

from tests.support.audit_log import chained_queries, sqlite_audit_log
from tests.support.procs import exited


def in_fresh_process(scenario, tmp_path: Path) -> None:
    child = multiprocessing.get_context("spawn").Process(target=scenario, args=(tmp_path,))
    child.start()
    child.join(120)
    assert child.exitcode == 0, f"{scenario.__name__} failed in its process (exit {child.exitcode}; see stderr)"


def q(n: int):
    return query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c", db_user="x",
                       protocol="postgres", query=f"SELECT {n}", client={"addr": "127.0.0.1:5"})


def queries(log) -> list[str]:
    return [e.query for e in log.iter_events() if e.type == "query"]


def verified(log, tmp_path: Path, n: int) -> None:
    assert verify_db(log.db, log.signer.public_key).ok
    report = verify_jsonl(tmp_path / "audit.jsonl", tmp_path / "keys" / "audit-signing.pem", expect_head=log.head())
    assert report.ok and log.head()[0] == n, report.summary()


def _chains_what_the_parent_hands_it(tmp_path: Path) -> None:
    with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
        chainer = ChainerProcess.start(log)
        assert chainer is not None and chainer.pid != os.getpid()
        events = [q(n) for n in range(20)]
        assert chainer.append_spooled(records_of(events[:12])) == 12
        assert Path(f"/proc/{chainer.pid}/comm").read_text().strip() == "sdm-audit-chain"  # set up by now
        assert chainer.append_spooled(records_of(events[12:])) == 8
        assert chained_queries(log) == [f"SELECT {n}" for n in range(20)]  # read by the parent
        asked = [Stamp(e.id, e.ts) for e in events[5:9]] + [Stamp(q(99).id, q(99).ts)]
        assert chainer.known_ids(asked) == {e.id for e in events[5:9]}
        verified(log, tmp_path, 20)
        pid = chainer.pid
        chainer.close()
        assert exited(pid) and chainer.pid is None


def _refused_batch_comes_back_as_audit_unavailable(tmp_path: Path) -> None:
    with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
        chainer = ChainerProcess.start(log)
        bad = list(records_of([q(1)])[0])
        bad[2] = "no such type!"
        try:
            chainer.append_spooled([tuple(bad)])
            raise AssertionError("a record that can never be chained was accepted")
        except AuditUnavailable as exc:
            assert "invalid audit event type" in exc.message, exc.message
        assert chainer.append_spooled(records_of([q(2)])) == 1  # the child is still there
        assert chained_queries(log) == ["SELECT 2"]
        chainer.close()


def _dead_child_hands_chaining_back(tmp_path: Path) -> None:
    with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
        chainer = ChainerProcess.start(log)

        async def main() -> int:
            spool = AuditSpool(tmp_path / "spool")
            spool.open()
            writer = AuditWriter(chainer, spool=spool, flush_interval=0.001)
            for n in range(50):
                ev = q(n)
                await writer.write([ev])
                writer.post([query_end_event(ev, rows=1, status="ok", duration_ms=1.0)])
            assert await writer.settled(timeout=10)
            os.kill(chainer.pid, signal.SIGKILL)
            assert exited(chainer.pid)
            for n in range(50, 100):
                await writer.write([q(n)])
            assert await writer.settled(timeout=10)
            await writer.aclose()
            return writer.failures

        assert asyncio.run(main()) >= 1  # the call that found the child gone failed, and was retried
        assert queries(log) == [f"SELECT {n}" for n in range(100)]
        verified(log, tmp_path, 150)
        try:
            chainer.append_spooled(records_of([q(100)]))  # in this process now
        except AuditUnavailable:
            raise AssertionError("chaining did not go on in the parent") from None
        chainer.close()


def _gone_error_says_what_happens_next(tmp_path: Path) -> None:
    with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
        chainer = ChainerProcess.start(log)
        os.kill(chainer.pid, signal.SIGKILL)
        assert exited(chainer.pid)
        try:
            chainer.append_spooled(records_of([q(1)]))
            raise AssertionError("a call to a dead chainer succeeded")
        except AuditUnavailable as exc:
            assert exc.message == CHAINER_GONE, exc.message
        chainer.close()


def _no_fork_means_no_chainer(tmp_path: Path) -> None:
    import multiprocessing.process

    def refuse(self):
        raise OSError(11, "Resource temporarily unavailable")

    multiprocessing.process.BaseProcess.start = refuse  # this interpreter only (spawned for the test)
    with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
        assert ChainerProcess.start(log) is None  # the gateway then chains in a thread


def test_a_failed_fork_leaves_chaining_to_the_gateway(tmp_path):
    in_fresh_process(_no_fork_means_no_chainer, tmp_path)


def test_the_child_chains_what_the_parent_hands_it_and_stops_on_close(tmp_path):
    in_fresh_process(_chains_what_the_parent_hands_it, tmp_path)


def test_a_refused_batch_comes_back_as_audit_unavailable(tmp_path):
    in_fresh_process(_refused_batch_comes_back_as_audit_unavailable, tmp_path)


def test_a_dead_child_hands_chaining_back_without_losing_or_doubling(tmp_path):
    in_fresh_process(_dead_child_hands_chaining_back, tmp_path)


def test_with_the_chainer_gone_the_error_says_what_happens_next(tmp_path):
    in_fresh_process(_gone_error_says_what_happens_next, tmp_path)


def test_no_fork_while_other_threads_run(tmp_path):
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        with sqlite_audit_log(tmp_path, checkpoint_every=7) as log:
            assert ChainerProcess.start(log) is None  # the gateway then chains in a thread
    finally:
        stop.set()
        other.join()
