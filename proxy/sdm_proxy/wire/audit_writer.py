"""The audit front shared by every session of a gateway: record before the statement runs, chain in batches.

``write(events)`` returns once the events are recorded well enough for the statement to run, and
raises ``AuditUnavailable`` otherwise (the caller then refuses: fail closed, DESIGN §2.4). What
"recorded" means is the gateway's ``--audit-sync`` setting:

- ``write`` (default, needs a spool): written to the audit spool (``audit/spool.py``), which
  survives a gateway crash; chained into the state database and the JSON-lines sink a few ms later;
- ``fsync``: the spool is also fdatasynced first (one fsync shared by every statement waiting);
- ``commit``: chained and committed (database and sink fsync) first: about 1 ms per statement.

``post(events)`` is for outcomes recorded after the fact (query.end, session.end): never blocks. In
spool modes its lines ride along with the next ``write``'s ``write(2)`` (or go at the end of the
loop's current pass, whichever comes first): one system call per statement instead of two. That
only moves the outcome's spooling later by less than a loop pass; it was already written after the
statement ran.

One worker moves queued events into the chain (group commit) from a thread, so many concurrent
statements share one commit. In spool modes a failed commit is retried (the events are safe in the
spool); in commit mode it refuses its waiters and retries its after-the-fact events on their own.
Past ``max_backlog`` queued events (or ``max_backlog_chars`` of their text: a statement's record
can hold 1 MiB) new statements wait for the chain to catch up (bounded memory, backpressure) and
are refused if it does not within ``CATCH_UP_WAIT``.

In spool modes the queue holds plain tuples ``(id, ts, type, user, body)`` (``AuditLog.
append_spooled``), not the ``Event`` objects: those die with their statement, and the queue holds
nothing the garbage collector must walk again and again (at 20,000 statements a second that walk
cost a quarter of the time).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

from ..audit.events import Event
from ..audit.query_records import event_of
from ..audit.records import chainable, check_records, records_of, spool_lines
from ..audit.spool import AuditSpool, SpoolMark
from ..errors import AuditUnavailable
from .audit_chaining import BUSY_BATCH, SHUTTING_DOWN, ChainingSteps, body_chars
from .audit_settle import Settlement

log = logging.getLogger("sdm.wire.audit")

SYNC_MODES = ("write", "fsync", "commit")
SETTLE_WAIT = 2.0  # longest a reader (activity, audit tail) waits for the chain to take in what was recorded
CATCH_UP_WAIT = 10.0  # longest a statement waits for the chain to catch up before it is refused
MAX_BACKLOG_CHARS = 64 << 20  # text of the queued records; 10,000 ordinary records hold about 6 MB


class AuditWriter(ChainingSteps):
    """See the module docstring; how queued records reach the chain is in ``audit_chaining.py``."""

    def __init__(self, audit_log, *, spool: AuditSpool | None = None, sync: str = "write",
                 max_batch: int = 5000, post_delay: float = 0.05, flush_interval: float = 0.02,
                 max_backlog: int = 10000, max_backlog_chars: int = MAX_BACKLOG_CHARS):
        if sync not in SYNC_MODES:
            raise ValueError(f"audit sync mode must be one of {', '.join(SYNC_MODES)}")
        self._log = audit_log
        self._spool = spool if sync != "commit" else None
        self.sync = sync if self._spool is not None else "commit"
        # Events per commit at most. Big batches matter: every commit rewrites the index pages
        # its events touch (random UUIDs: nearly one page each), and the WAL checkpoint again.
        self._max_batch = max_batch
        # After-the-fact records wait this long for company (commit mode: the next durable write).
        self._delay = flush_interval if self._spool is not None else post_delay
        # Past this many queued events (~1 KB each in memory) statements wait for the chain to
        # catch up (backpressure); if it does not within CATCH_UP_WAIT, they are refused.
        self._max_backlog = max_backlog
        self._max_backlog_chars = max_backlog_chars
        self._queued_chars = 0  # spool modes: the bodies' length of the records in _queue
        self._caught_up: asyncio.Event | None = None
        # Spool modes: records (id, ts, type, user, body), in spool order. Commit mode: (events,
        # a waiter or None).
        self._queue: deque[tuple] = deque()
        self._queued_events = 0  # commit mode (spool modes: len(self._queue), one record per event)
        self._urgent = 0  # commit mode: queued items somebody awaits
        self._readers = 0  # settled() calls waiting
        self._backing_off = False  # waiting out a retry delay: readers must not cut it short
        # Spool modes: (records queued in all, before this mark; the mark's segment and offset), to
        # trim the spool once those are chained. Plain ints: the GC stops looking at them at once.
        self._marks: deque[tuple[int, int, int]] = deque()
        self._settlement = Settlement()  # records queued / taken off the queue, for settled() and the marks
        self._trim = True  # False once records were given up on: the spool must then keep everything
        # post()ed (records, their spool lines) not yet spooled: they go with the next write's write(2)
        self._pending: list[tuple[list[tuple], bytes]] = []
        self._pending_flush = False  # a flush of _pending is scheduled on the loop
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._syncer: asyncio.Future | None = None
        self._closed = False
        self._cancelled = False  # the worker was cancelled: the draining thread stops
        self._close_deadline: float | None = None  # while closing, retries stop after this
        self.failures = 0
        self.chained = 0  # events moved into the chain by this writer
        # A batch failed: its commit may have happened all the same (a connection lost mid-commit),
        # so the retry first drops what the chain already holds (ids are not unique in the table).
        self._recheck = False
        # Commit mode: outcomes put back after a failed batch; the next batch holds only them (so a
        # statement waiting to run never shares a batch with them), and since when they fail.
        self._retry_events = 0
        self._retry_failing_since = 0.0

    async def write(self, events: Iterable[Event]) -> None:
        """Record before the action; raises AuditUnavailable when that is not possible."""
        events = list(events)
        if not events:
            return
        if self._closed:
            raise AuditUnavailable(SHUTTING_DOWN)
        if self._spool is None:
            fut = asyncio.get_running_loop().create_future()
            self._enqueue_events(events, fut)
            await fut
            return
        records = records_of(events)
        check_records(records)  # one that can never be chained is refused here, not retried forever
        await self._write_spooled(records)

    async def write_records(self, records: list[tuple]) -> None:
        """``write`` for records made ready (``audit/query_records.py``, valid by construction)."""
        if not records:
            return
        if self._spool is None:  # commit mode chains Event objects
            await self.write([event_of(r) for r in records])
            return
        if self._closed:
            raise AuditUnavailable(SHUTTING_DOWN)
        await self._write_spooled(records)

    async def _write_spooled(self, records: list[tuple]) -> None:
        if self._backlog_full():
            await self._wait_for_catch_up()
        mark = self._spool_write((records, spool_lines(records)))
        if self.sync == "fsync":
            await self._fsynced(mark)

    def post(self, events: Iterable[Event]) -> None:
        """Record without waiting (the outcome of something already audited)."""
        events = list(events)
        if not events:
            return
        if self._spool is None:
            # As in spool mode: one that can never be chained is logged and left out (it would fail
            # every retry of its batch, refusing the statements that share it).
            ok = {r[0] for r in chainable([(ev.id, ev.ts, ev.type, ev.user, None) for ev in events])}
            events = [ev for ev in events if ev.id in ok]
            if events:
                self._enqueue_events(events, None)
            return
        self._post_spooled(chainable(records_of(events)))

    def post_records(self, records: list[tuple]) -> None:
        """``post`` for records made ready (``audit/query_records.py``, valid by construction)."""
        if self._spool is None:
            self.post([event_of(r) for r in records])
            return
        self._post_spooled(records)

    def _post_spooled(self, records: list[tuple]) -> None:
        if not records:
            return
        self._pending.append((records, spool_lines(records)))
        if not self._pending_flush:
            self._pending_flush = True
            asyncio.get_running_loop().call_soon(self._flush_pending)

    async def settled(self, timeout: float = SETTLE_WAIT) -> bool:
        """Wait (at most ``timeout`` s) until every event recorded before this call is chained, so
        a reader of the log sees them; False if the chain did not catch up in time."""
        if self._pending:
            self._flush_pending()
        self._readers += 1  # the worker skips the flush-interval wait while somebody reads
        try:
            if self._wake is not None and not self._backing_off:
                self._wake.set()
            return await self._settlement.wait(timeout)
        finally:
            self._readers -= 1

    def _flush_pending(self) -> None:
        self._pending_flush = False
        if self._pending:
            self._spool_write(None)

    def _spool_write(self, own: tuple[list[tuple], bytes] | None) -> SpoolMark | None:
        """Spool the pending post()ed records and then ``own`` with one write(2), and queue them.

        Raises AuditUnavailable when ``own`` could not be written (its statement is refused);
        post()ed events that could not be written still reach the chain from memory."""
        items = self._pending
        self._pending = []
        if own is not None:
            items.append(own)
        try:
            marks = self._spool.append_chunks([data for _, data in items])
        except AuditUnavailable as exc:
            if own is not None:
                items.pop()
            if items:
                log.error("could not spool %d after-the-fact audit event(s): %s",
                          sum(len(recs) for recs, _ in items), exc.message)
                for recs, _ in items:
                    self._enqueue_records(recs, None)
            if own is not None:
                raise
            return None
        try:
            self._spool.maybe_roll()
        except OSError as exc:  # the events are written; only the next segment failed to open
            log.error("could not start a new audit spool segment: %s", exc.strerror or exc)
        for (recs, _), mark in zip(items, marks):
            self._enqueue_records(recs, mark)
        return marks[-1]

    async def _wait_for_catch_up(self) -> None:
        if self._caught_up is None:
            self._caught_up = asyncio.Event()
        self._caught_up.clear()
        try:
            async with asyncio.timeout(CATCH_UP_WAIT):
                while self._backlog_full():
                    await self._caught_up.wait()
                    self._caught_up.clear()
        except TimeoutError:
            raise AuditUnavailable(
                f"audit log unavailable: {len(self._queue)} events wait for the state database, which "
                "is not keeping up (see the gateway log); the action was refused") from None
        if self._closed:
            raise AuditUnavailable(SHUTTING_DOWN)

    async def _fsynced(self, mark: SpoolMark) -> None:
        """Wait until the spool is fsynced past ``mark`` (concurrent callers share one fsync)."""
        while self._spool.needs_sync(mark):
            if self._syncer is None or self._syncer.done():
                self._syncer = asyncio.ensure_future(asyncio.to_thread(self._spool.sync))
            try:
                await asyncio.shield(self._syncer)
            except OSError as exc:
                raise AuditUnavailable(f"audit log unavailable: cannot fsync the audit spool: "
                                       f"{exc.strerror or exc}; the action was refused") from None

    def _enqueue_records(self, records: list[tuple], mark: SpoolMark | None) -> None:
        first = not self._queue
        self._queue.extend(records)
        self._queued_chars += body_chars(records)
        self._settlement.enqueued(len(records))
        if mark is not None:
            self._marks.append((self._settlement.queued, mark[0], mark[1]))
        self._kick(first)

    def _enqueue_events(self, events: list[Event], fut: asyncio.Future | None) -> None:
        first = not self._queue
        self._queue.append((events, fut))
        self._queued_events += len(events)
        self._settlement.enqueued(len(events))
        if fut is not None:
            self._urgent += 1
        self._kick(first or fut is not None)

    def _kick(self, now: bool) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="sdm-audit-writer")
        if now or self._waiting() >= self._max_batch:
            self._wake.set()

    async def _run(self) -> None:
        retry_delay = 0.0
        waited = False  # the queued events already waited (for the previous commit): go at once
        while True:
            if not self._queue:
                if self._closed:
                    return
                waited = False
                self._wake.clear()
                await self._wake.wait()
                continue
            # A reader waiting (settled()) skips the gathering wait, never a retry's back-off.
            hurry = self._urgent or (self._readers and not retry_delay)
            if (not waited or retry_delay) and not hurry and not self._closed \
                    and self._waiting() < self._max_batch:
                # Nobody waits: give more events a moment to join this commit.
                self._wake.clear()
                self._backing_off = bool(retry_delay)
                try:
                    async with asyncio.timeout(max(self._delay, retry_delay)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                finally:
                    self._backing_off = False
            if self._spool is not None:
                retry_delay = await self._chain_spooled(retry_delay)
            else:
                retry_delay = await self._chain_events(retry_delay)
            waited = self._waiting() >= BUSY_BATCH
            self._let_in()

    def _waiting(self) -> int:
        return len(self._queue) if self._spool is not None else self._queued_events

    def _backlog_full(self) -> bool:
        return self._waiting() >= self._max_backlog or self._queued_chars >= self._max_backlog_chars

    def _let_in(self) -> None:
        if self._caught_up is not None and not self._backlog_full():
            self._caught_up.set()  # statements held back by a full backlog may go on

    async def aclose(self) -> None:
        """Chain what is queued, then stop the worker (and close the spool)."""
        self._flush_pending()
        self._closed = True
        if self._worker is not None and not self._worker.done():
            self._wake.set()
            try:
                await self._worker
            except BaseException:  # noqa: BLE001
                pass
        if self._caught_up is not None:
            self._caught_up.set()  # statements still waiting to be let in: refused (shutting down)
        if self._spool is not None:
            self._spool.close()
