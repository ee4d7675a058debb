"""The audit front shared by every session of a gateway: record before the statement runs, chain in batches.

``write(events)`` returns once the events are recorded well enough for the statement to run, and
raises ``AuditUnavailable`` otherwise (the caller then refuses: fail closed, DESIGN §2.4). What
"recorded" means is the gateway's ``--audit-sync`` setting:

- ``write`` (default, needs a spool): written to the audit spool (``audit/spool.py``), which
  survives a gateway crash; chained into the state database and the JSON-lines sink a few ms later;
- ``fsync``: the spool is also fdatasynced first (one fsync shared by every statement waiting);
- ``commit``: chained and committed (database and sink fsync) first: about 1 ms per statement.

``post(events)`` is for outcomes recorded after the fact (query.end, session.end): never blocks.

One worker moves queued events into ``AuditLog.append_many`` (group commit) from a thread, so many
concurrent statements share one commit. In spool modes a failed commit is retried (the events are
safe in the spool); past ``max_backlog`` queued events new statements wait for the chain to catch up
(bounded memory, backpressure) and are refused if it does not within ``CATCH_UP_WAIT``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable

from ..audit.events import Event, canonical_json
from ..audit.spool import AuditSpool, SpoolMark
from ..errors import AuditUnavailable, SdmError

log = logging.getLogger("sdm.wire.audit")

SYNC_MODES = ("write", "fsync", "commit")
SHUTTING_DOWN = "audit log unavailable: the gateway is shutting down; the action was refused"
RETRY_MAX_DELAY = 2.0
CATCH_UP_WAIT = 10.0  # longest a statement waits for the chain to catch up before it is refused


class AuditWriter:
    def __init__(self, audit_log, *, spool: AuditSpool | None = None, sync: str = "write",
                 max_batch: int = 1000, post_delay: float = 0.05, flush_interval: float = 0.02,
                 max_backlog: int = 5000):
        if sync not in SYNC_MODES:
            raise ValueError(f"audit sync mode must be one of {', '.join(SYNC_MODES)}")
        self._log = audit_log
        self._spool = spool if sync != "commit" else None
        self.sync = sync if self._spool is not None else "commit"
        self._max_batch = max_batch
        # After-the-fact records wait this long for company (commit mode: the next durable write).
        self._delay = flush_interval if self._spool is not None else post_delay
        # Past this many queued events (~1.6 KB each in memory) statements wait for the chain to
        # catch up (backpressure); if it does not within CATCH_UP_WAIT, they are refused.
        self._max_backlog = max_backlog
        self._caught_up: asyncio.Event | None = None
        # (events, their spooled bodies or None, a waiter or None, spool mark or None)
        self._queue: deque[tuple[list[Event], list[str] | None, asyncio.Future | None, SpoolMark | None]] = deque()
        self._urgent = 0  # queued items somebody awaits
        self._queued_events = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._syncer: asyncio.Future | None = None
        self._closed = False
        self._close_deadline: float | None = None  # while closing, retries stop after this
        self.failures = 0
        self.chained = 0  # events moved into the chain by this writer

    async def write(self, events: Iterable[Event]) -> None:
        """Record before the action; raises AuditUnavailable when that is not possible."""
        events = list(events)
        if not events:
            return
        if self._closed:
            raise AuditUnavailable(SHUTTING_DOWN)
        if self._spool is None:
            fut = asyncio.get_running_loop().create_future()
            self._enqueue(events, None, fut, None)
            await fut
            return
        if self._queued_events >= self._max_backlog:
            await self._wait_for_catch_up()
        bodies = [canonical_json(ev.body_dict()) for ev in events]
        mark = self._spool_append(bodies)
        self._enqueue(events, bodies, None, mark)
        if self.sync == "fsync":
            await self._fsynced(mark)

    def post(self, events: Iterable[Event]) -> None:
        """Record without waiting (the outcome of something already audited)."""
        events = list(events)
        if not events:
            return
        mark = bodies = None
        if self._spool is not None:
            bodies = [canonical_json(ev.body_dict()) for ev in events]
            try:
                mark = self._spool_append(bodies)
            except AuditUnavailable as exc:  # the outcome still reaches the chain from memory
                log.error("could not spool %d after-the-fact audit event(s): %s", len(events), exc.message)
        self._enqueue(events, bodies, None, mark)

    async def _wait_for_catch_up(self) -> None:
        if self._caught_up is None:
            self._caught_up = asyncio.Event()
        self._caught_up.clear()
        try:
            async with asyncio.timeout(CATCH_UP_WAIT):
                while self._queued_events >= self._max_backlog:
                    await self._caught_up.wait()
                    self._caught_up.clear()
        except TimeoutError:
            raise AuditUnavailable(
                f"audit log unavailable: {self._queued_events} events wait for the state database, which "
                "is not keeping up (see the gateway log); the action was refused") from None
        if self._closed:
            raise AuditUnavailable(SHUTTING_DOWN)

    def _spool_append(self, bodies: list[str]) -> SpoolMark:
        mark = self._spool.append_bodies(bodies)
        try:
            self._spool.maybe_roll()
        except OSError as exc:  # the events are written; only the next segment failed to open
            log.error("could not start a new audit spool segment: %s", exc.strerror or exc)
        return mark

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

    def _enqueue(self, events: list[Event], bodies: list[str] | None, fut: asyncio.Future | None,
                 mark: SpoolMark | None) -> None:
        first = not self._queue
        self._queue.append((events, bodies, fut, mark))
        self._queued_events += len(events)
        if fut is not None:
            self._urgent += 1
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="sdm-audit-writer")
        if first or fut is not None or self._queued_events >= self._max_batch:
            self._wake.set()

    async def _run(self) -> None:
        retry_delay = 0.0
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._urgent and not self._closed and self._queued_events < self._max_batch:
                # Nobody waits: give more events a moment to join this commit.
                self._wake.clear()
                try:
                    async with asyncio.timeout(max(self._delay, retry_delay)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            taken = self._take_batch()
            batch, bodies = self._unchained(taken)
            try:
                await asyncio.to_thread(self._log.append_many, batch, bodies)
            except asyncio.CancelledError:
                self._fail_waiters(taken, AuditUnavailable(SHUTTING_DOWN))
                raise
            except Exception as exc:  # noqa: BLE001 - every failure refuses (fail closed)
                self.failures += 1
                if not isinstance(exc, AuditUnavailable):
                    reason = exc.message if isinstance(exc, SdmError) else type(exc).__name__
                    exc = AuditUnavailable(f"audit log unavailable: {reason}; the action was refused")
                if self._spool is not None and not self._giving_up(exc):
                    # Safe in the spool: keep them (in order) and try again a little later.
                    self._requeue(taken)
                    retry_delay = min(RETRY_MAX_DELAY, max(0.05, retry_delay * 2))
                    log.error("audit events not yet chained (%d waiting, retrying in %.2fs): %s",
                              self._queued_events, retry_delay, exc.message)
                    continue
                if not any(fut for _, _, fut, _ in taken):
                    log.error("could not record %d audit event(s) after the fact: %s", len(batch), exc)
                self._fail_waiters(taken, exc)
                continue
            retry_delay = 0.0
            self.chained += len(batch)
            if self._caught_up is not None and self._queued_events < self._max_backlog:
                self._caught_up.set()
            marks = [mark for _, _, _, mark in taken if mark is not None]
            if marks:
                self._spool_chained(max(marks, key=lambda m: (m.segment, m.offset)))
            for _, _, fut, _ in taken:
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _take_batch(self) -> list:
        taken: list = []
        size = 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self._max_batch):
            item = self._queue.popleft()
            taken.append(item)
            size += len(item[0])
            self._queued_events -= len(item[0])
            if item[2] is not None:
                self._urgent -= 1
        return taken

    @staticmethod
    def _unchained(taken: list) -> tuple[list[Event], list[str] | None]:
        """The events still to chain (a retried batch may have been committed in part), with their
        spooled bodies when every one has one."""
        events: list[Event] = []
        bodies: list[str] | None = []
        for evs, bods, _, _ in taken:
            for i, ev in enumerate(evs):
                if ev.seq is None:
                    events.append(ev)
                    if bodies is not None:
                        if bods is None:
                            bodies = None
                        else:
                            bodies.append(bods[i])
        return events, bodies

    def _requeue(self, taken: list) -> None:
        for item in reversed(taken):
            self._queue.appendleft(item)
            self._queued_events += len(item[0])
            if item[2] is not None:
                self._urgent += 1

    def _giving_up(self, exc: AuditUnavailable) -> bool:
        """While closing, stop retrying after a deadline: the spool keeps the events for next start."""
        if not self._closed:
            return False
        if self._close_deadline is None:
            self._close_deadline = time.monotonic() + 5
        if time.monotonic() < self._close_deadline:
            return False
        log.error("stopping with audit events not chained; they stay in the spool and are chained at the "
                  "next gateway start: %s", exc.message)
        return True

    def _spool_chained(self, mark: SpoolMark) -> None:
        try:
            self._spool.chained(mark)
        except OSError as exc:  # only housekeeping failed: recovery skips events the chain holds
            log.warning("could not trim the audit spool: %s", exc.strerror or exc)

    @staticmethod
    def _fail_waiters(taken: list, exc: Exception) -> None:
        for _, _, fut, _ in taken:
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def aclose(self) -> None:
        """Chain what is queued, then stop the worker (and close the spool)."""
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
