"""A batching front for ``AuditLog.append_many`` shared by every session of a listener.

Why: ``AuditLog`` is synchronous and commits (and fsyncs its sink) per call. Calling it once per
statement per connection from the event loop would block every other session; calling it from a
thread per statement would serialise on its lock anyway. One worker drains whatever is queued into a
single ``append_many`` (group commit), so many concurrent statements share one commit.

``write`` is durable-before-return and raises ``AuditUnavailable`` (the caller then refuses the
action: fail closed, DESIGN §2.4); ``post`` is for outcomes recorded after the fact (query.end,
session.end) and never blocks the relay. Posted events wait up to ``post_delay`` for the next
``write`` so they share its commit: a client running one statement after another then costs one
commit per statement, not two.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

from ..audit.events import Event
from ..errors import AuditUnavailable, SdmError

log = logging.getLogger("sdm.wire.audit")


class AuditWriter:
    def __init__(self, audit_log, *, max_batch: int = 1000, post_delay: float = 0.05):
        self._log = audit_log
        self._max_batch = max_batch
        self._post_delay = post_delay
        self._queue: deque[tuple[list[Event], asyncio.Future | None]] = deque()
        self._urgent = 0  # queued items somebody awaits
        self._queued_events = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        self.failures = 0

    async def write(self, events: Iterable[Event]) -> None:
        """Append durably; raises AuditUnavailable when the log cannot be written."""
        events = list(events)
        if not events:
            return
        if self._closed:
            raise AuditUnavailable("audit log unavailable: the gateway is shutting down; the action was refused")
        fut = asyncio.get_running_loop().create_future()
        self._enqueue(events, fut)
        await fut

    def post(self, events: Iterable[Event]) -> None:
        """Append without waiting (the outcome of something already audited)."""
        events = list(events)
        if events:
            self._enqueue(events, None)

    def _enqueue(self, events: list[Event], fut: asyncio.Future | None) -> None:
        first = not self._queue
        self._queue.append((events, fut))
        self._queued_events += len(events)
        if fut is not None:
            self._urgent += 1
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="sdm-audit-writer")
        if first or fut is not None or self._queued_events >= self._max_batch:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._urgent and not self._closed and self._queued_events < self._max_batch:
                # Only after-the-fact records: give the next durable write a moment to join them.
                self._wake.clear()
                try:
                    async with asyncio.timeout(self._post_delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            batch: list[Event] = []
            waiters: list[asyncio.Future] = []
            while self._queue and (not batch or len(batch) + len(self._queue[0][0]) <= self._max_batch):
                events, fut = self._queue.popleft()
                batch.extend(events)
                self._queued_events -= len(events)
                if fut is not None:
                    self._urgent -= 1
                    waiters.append(fut)
            try:
                await asyncio.to_thread(self._log.append_many, batch)
            except asyncio.CancelledError:
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(AuditUnavailable(
                            "audit log unavailable: the gateway is shutting down; the action was refused"))
                raise
            except Exception as exc:  # noqa: BLE001 - every failure refuses (fail closed)
                self.failures += 1
                if not isinstance(exc, AuditUnavailable):
                    reason = exc.message if isinstance(exc, SdmError) else type(exc).__name__
                    exc = AuditUnavailable(f"audit log unavailable: {reason}; the action was refused")
                if not waiters:
                    log.error("could not record %d audit event(s) after the fact: %s", len(batch), exc)
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def aclose(self) -> None:
        """Write what is queued, then stop the worker."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            self._wake.set()
            try:
                await self._worker
            except BaseException:  # noqa: BLE001
                pass
