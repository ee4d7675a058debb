"""Live policy for a MySQL session: access that expires or is revoked ends the connection.

A watcher task re-checks the session's right to stay connected every few seconds; the upstream
goes at once, and the client's next command hears why.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from ...audit import events as audit
from ..net import POLICY_FAILURES_MAX, UNCONFIRMED_ACCESS
from .errors import ConnectionEnded

log = logging.getLogger("sdm.wire.mysql")

REVOKED_LINGER = 30.0  # after access ends, the client's next command hears why (then we hang up)


class AccessWatch:
    """Mixed into ``Session`` (its state is set up in ``Session.__init__``): the access watcher."""

    async def _watch(self) -> None:
        """Close when access ends: grant expiry or a revoked session / lease, checked every few seconds."""
        interval = self.ctx.policy_interval
        failures = 0  # consecutive checks that raised
        while self._ended is None:
            cred = self.cred
            delay = interval
            if cred is not None and cred.access_expires_at is not None:
                left = (cred.access_expires_at - datetime.now(timezone.utc)).total_seconds()
                if left <= 0:
                    self._end_access(f"access to {cred.datasource.name}/{cred.credential} expired")
                    break
                delay = min(delay, left)
            await asyncio.sleep(delay)
            cred = self.cred
            if cred is None or self.ctx.policy_check is None:
                continue
            try:
                reason = await self.ctx.policy_check(cred)
            except Exception as exc:  # noqa: BLE001 - a flaky check must not drop every session
                log.warning("policy check for session %s failed: %s", cred.session_id, type(exc).__name__)
                failures += 1
                if failures >= POLICY_FAILURES_MAX:  # ... but access nobody can confirm must end
                    self._end_access(UNCONFIRMED_ACCESS, status=audit.ERROR)
                    break
                continue
            failures = 0
            if reason and cred is self.cred:
                self._end_access(reason)
        # The upstream is gone; the client's next command hears why. A client that never sends one
        # is hung up on after a while.
        await asyncio.sleep(REVOKED_LINGER)
        status, reason = self._ended
        if self._goodbye is None:
            self._goodbye = (ConnectionEnded(f"connection closed by the gateway: {reason}"), status, reason)
        self.client.interrupt()

    def _end_access(self, reason: str, *, status: str = audit.DENIED) -> None:
        if self._ended is not None:
            return
        self._ended = (status, reason)
        log.info("mysql connection %s closed: %s", self.connection_id, reason)
        self._close_upstream()  # the database session ends now; a command in flight fails
        if self._started_event and self._cmd is None:
            # On record now, not when the client next speaks (a command in flight records it when
            # its relay fails, so the query's outcome comes first).
            self.ctx.audit.post([self._session_event("end", status=status, error=reason)])
            self._started_event = False
