"""Read-your-writes for the audit log: wait until what was recorded so far is in the chain.

The gateway records a statement (spool, or memory after the fact) before or as it runs and chains
it into the state database a few ms later, in batches. A reader in the same gateway (``%sdm
activity`` right after a query) waits here, bounded, so it sees the statement it just ran.
Progress is two running counts: records queued, records taken off the queue (chained, or given up
on: nobody must wait for those)."""

from __future__ import annotations

import asyncio
import heapq
import itertools


PURGE_AT = 1024


class Settlement:
    def __init__(self) -> None:
        self.queued = 0
        self.done = 0
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # (target, tie-break, future)
        self._order = itertools.count()

    def enqueued(self, n: int) -> None:
        self.queued += n

    def finished(self, n: int) -> None:
        self.done += n
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.done:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                fut.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True once everything queued before this call is finished; False after ``timeout`` s."""
        target = self.queued
        if self.done >= target:
            return True
        fut = asyncio.get_running_loop().create_future()
        if len(self._waiters) >= PURGE_AT:  # readers that gave up while the chain was stuck
            self._waiters = [w for w in self._waiters if not w[2].done()]
            heapq.heapify(self._waiters)
        heapq.heappush(self._waiters, (target, next(self._order), fut))
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return False
        return True
