"""How queued audit records reach the chain: ``AuditWriter``'s worker steps (audit_writer.py).

Spool modes: a worker thread drains the queue batch after batch into ``AuditLog.append_spooled``;
a failed batch goes back to the front of the queue and is retried with a growing delay (rechecked
against the chain first: a lost connection may have committed it all the same), and each chained
batch lets the spool be trimmed. Commit mode: one batch of events at a time, whose waiters learn
how it went; the after-the-fact events of a failed batch are retried the same way (bounded).
Separate from the writer's front (``write``, ``post``, ``settled``) so each stays readable; the
state both share is set in ``AuditWriter.__init__``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..audit.spool import SpoolMark
from ..errors import AuditUnavailable, SdmError

if TYPE_CHECKING:
    from collections import deque

    from ..audit.spool import AuditSpool
    from .audit_settle import Settlement

log = logging.getLogger("sdm.wire.audit")

SHUTTING_DOWN = "audit log unavailable: the gateway is shutting down; the action was refused"
RETRY_MAX_DELAY = 2.0
# Records that justify a commit at once: fewer gather for the flush interval first (at a trickle,
# back-to-back commits of a few events would cost the relay more CPU than they save latency).
BUSY_BATCH = 256
# Commit mode: outcomes that keep failing on their own (a batch of nothing else) this long are
# given up on: one the database can never store must not be retried for ever.
POSTED_RETRY_FOR = 30.0


class ChainingSteps:
    """Part of ``AuditWriter``: the steps that move queued records into the chain."""

    if TYPE_CHECKING:  # the AuditWriter state used here (set in AuditWriter.__init__)
        _log: object
        _spool: AuditSpool | None
        _queue: deque[tuple]
        _max_batch: int
        _queued_events: int
        _urgent: int
        _marks: deque[tuple[int, int, int]]
        _settlement: Settlement
        _trim: bool
        _queued_chars: int
        _closed: bool
        _cancelled: bool
        _close_deadline: float | None
        _recheck: bool
        _retry_events: int
        _retry_failing_since: float
        _max_backlog: int
        failures: int
        chained: int

        def _let_in(self) -> None: ...

    async def _chain_spooled(self, retry_delay: float) -> float:
        """Chain spooled records (a worker thread drains the queue); returns the delay before the
        next try."""
        try:
            await asyncio.to_thread(self._drain, asyncio.get_running_loop())
        except asyncio.CancelledError:
            self._cancelled = True  # the thread stops after its batch; the rest stays in the spool
            raise
        except _BatchFailed as failed:
            self.failures += 1
            exc = _unavailable(failed.cause)
            if self._giving_up(exc):
                self._trim = False  # they stay in the spool (untrimmed from here on): the next start chains them
                self._queued_chars -= body_chars(failed.batch)
                return 0.0
            self._queue.extendleft(reversed(failed.batch))  # keep them, in order, and try again later
            retry_delay = min(RETRY_MAX_DELAY, max(0.05, retry_delay * 2))
            log.error("audit events not yet chained (%d waiting, retrying in %.2fs): %s",
                      len(self._queue), retry_delay, exc.message)
            return retry_delay
        return 0.0

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: chain batch after batch while records wait, without going back to the
        event loop in between (it may be busy for a while; the database would idle meanwhile).

        Only this thread takes from the queue while it runs; the loop only appends (deque
        operations are atomic). Progress goes back to the loop in order (``_spool_progress``)."""
        queue, limit = self._queue, self._max_batch
        batch_done = False
        while queue and not self._cancelled:
            if len(queue) < BUSY_BATCH and batch_done:
                return  # a trickle: let the loop gather it for a while (one commit per flush interval)
            batch_done = True
            batch = [queue.popleft() for _ in range(min(len(queue), limit))]
            try:
                # After a failure the commit may have happened all the same (a connection lost
                # mid-commit): the retry skips what the chain holds, checked under the chain's lock.
                self._log.append_spooled(batch, only_new=self._recheck)
                self._recheck = False
            except Exception as exc:  # noqa: BLE001 - the loop decides: retry later, or give up
                self._recheck = True
                raise _BatchFailed(batch, exc) from None
            try:
                loop.call_soon_threadsafe(self._spool_progress, len(batch), body_chars(batch))
            except RuntimeError:  # the loop is gone (shut down): the spool keeps the rest
                return

    def _spool_progress(self, n: int, chars: int) -> None:
        """(Loop) ``n`` more records (``chars`` of text) are chained: trim the spool, let held-back
        statements in."""
        self.chained += n
        self._queued_chars -= chars
        self._settlement.finished(n)
        mark = None
        marks = self._marks
        while marks and marks[0][0] <= self._settlement.done:
            mark = marks.popleft()
        if mark is not None and self._trim:
            self._spool_chained(SpoolMark(mark[1], mark[2]))
        self._let_in()

    async def _chain_events(self, retry_delay: float) -> float:
        """Commit mode: one batch of events into the chain; their waiters learn how it went.
        Returns the delay before the next try (after-the-fact events of a failed batch are retried)."""
        taken: list = []
        queue, limit, size = self._queue, self._max_batch, 0
        if self._retry_events:  # outcomes put back after a failure: on their own
            limit = self._retry_events
        while queue and (not taken or size + len(queue[0][0]) <= limit):
            item = queue.popleft()
            taken.append(item)
            size += len(item[0])
            if item[1] is not None:
                self._urgent -= 1
        self._queued_events -= size
        batch = [ev for evs, _ in taken for ev in evs]
        retried = self._recheck
        try:
            await asyncio.to_thread(self._log.append_many, batch, only_new=retried)
        except asyncio.CancelledError:
            _settle(taken, AuditUnavailable(SHUTTING_DOWN))
            self._settlement.finished(size)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure refuses (fail closed)
            self.failures += 1
            self._recheck = True  # the commit may have happened after all: the retry checks first
            exc = _unavailable(exc)
            _settle(taken, exc)  # their statements are refused
            return self._retry_posted(taken, size, exc, retry_delay)
        self._recheck = False
        self._retry_events = 0
        self._settlement.finished(size)
        self.chained += len(batch)
        _settle(taken, None)
        return 0.0

    def _retry_posted(self, taken: list, size: int, exc: AuditUnavailable, retry_delay: float) -> float:
        """Commit mode, a batch failed: its after-the-fact events (outcomes of what already ran:
        query.end, session.end) go back to the front of the queue, up to ``max_backlog`` of them,
        unless the gateway is closing past its deadline. There is no spool to keep them meanwhile."""
        posted = [item for item in taken if item[1] is None]
        keep: list = []
        kept = 0
        now = time.monotonic()
        if not self._retry_events:
            self._retry_failing_since = now
        elif now - self._retry_failing_since >= POSTED_RETRY_FOR:  # failing on their own, for long
            log.error("giving up on %d after-the-fact audit event(s) after %.0f s of failed retries",
                      sum(len(evs) for evs, _ in posted), now - self._retry_failing_since)
            posted = []
        if posted and not self._giving_up(exc):
            room = self._max_backlog - self._queued_events
            for item in posted:  # the oldest first; past the room the rest is dropped
                if kept + len(item[0]) > room:
                    break
                keep.append(item)
                kept += len(item[0])
            self._queue.extendleft(reversed(keep))
            self._queued_events += kept
        self._retry_events = kept
        dropped = sum(len(evs) for evs, _ in posted) - kept
        self._settlement.finished(size - kept)  # the kept ones are still on their way
        if dropped:
            log.error("could not record %d audit event(s) after the fact: %s", dropped, exc.message)
        if not kept:
            return 0.0
        retry_delay = min(RETRY_MAX_DELAY, max(0.05, retry_delay * 2))
        log.error("after-the-fact audit events not yet chained (%d waiting, retrying in %.2fs): %s",
                  kept, retry_delay, exc.message)
        return retry_delay

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


def body_chars(records) -> int:
    """The text the backlog holds for these spooled records ``(id, ts, type, user, body)``."""
    if len(records) == 1:  # the usual case on the event loop: one statement's record
        return len(records[0][4])
    return sum(len(r[4]) for r in records)


class _BatchFailed(Exception):
    def __init__(self, batch: list[tuple], cause: Exception):
        super().__init__(str(cause))
        self.batch, self.cause = batch, cause


def _unavailable(exc: Exception) -> AuditUnavailable:
    if isinstance(exc, AuditUnavailable):
        return exc
    reason = exc.message if isinstance(exc, SdmError) else type(exc).__name__
    return AuditUnavailable(f"audit log unavailable: {reason}; the action was refused")


def _settle(taken: list, exc: Exception | None) -> None:
    for _, fut in taken:
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
