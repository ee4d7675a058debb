"""How a PostgreSQL session ends: the ``_Close`` signal, the last FATAL, the upstream's Terminate,
``session.end``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ...audit import events as audit
from . import framing
from .machine import Input, Phase

if TYPE_CHECKING:
    from .machine import FrontMachine
    from .relay import UpstreamRelay
    from .server import ListenerContext
    from .tracker import Statement, StatementTracker
    from .upstream import UpstreamConnection


class _Close(Exception):
    """Internal: end the connection with this FATAL (or quietly when ``sqlstate`` is None)."""

    def __init__(self, sqlstate: str | None, message: str, *, status: str = audit.ERROR,
                 audit_denied: bool = False):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.status = status
        self.audit_denied = audit_denied


class ClosingPhase:
    """Part of ``Session``: the last words to the client and the clean-up, however the connection ended."""

    if TYPE_CHECKING:  # the Session state used here (set in Session.__init__)
        ctx: ListenerContext
        writer: asyncio.StreamWriter
        machine: FrontMachine
        upstream: UpstreamConnection | None
        tracker: StatementTracker
        cancel_pid: int | None
        _started_event: bool
        _down_splitter: framing.MessageSplitter | None
        _stream_broken: bool | None
        _relay_proto: UpstreamRelay | None

        # from SessionAudit:
        def _record_outcomes(self, stmts: list[Statement]) -> None: ...
        def _session_event(self, kind: str, status: str = ..., error: str | None = None) -> audit.Event: ...

    async def _send_fatal(self, sqlstate: str | None, message: str) -> None:
        """A last ErrorResponse when the client stream is at a message boundary, then hang up."""
        if self._relay_proto is not None:
            self._relay_proto.flush()
        if sqlstate is not None and self.writer.transport is not None and not self.writer.is_closing():
            splitter = self._down_splitter
            if self._stream_broken is False or (self._stream_broken is None
                                                and (splitter is None or splitter.at_boundary)):
                try:
                    self.writer.write(framing.error_response(sqlstate, message, severity="FATAL"))
                    async with asyncio.timeout(2):
                        await self.writer.drain()
                except (OSError, ConnectionError, TimeoutError, RuntimeError):
                    pass
        if self.machine.allows(Input.FAIL):
            self.machine.advance(Input.FAIL)

    def _finish(self, status: str, error: str | None) -> None:
        unfinished = self.tracker.abandon()
        if unfinished:
            self._record_outcomes(unfinished)
        if status == audit.DENIED and self._replenish is not None:
            # Access ended (revoked, expired): no warm login for a credential its user just lost.
            self._replenish.cancel()
            self._replenish = None
        if self.cancel_pid is not None:
            self.ctx.cancels.unregister(self.cancel_pid)
        if self.upstream is not None:
            try:
                if not self.upstream.writer.is_closing():
                    self.upstream.writer.write(framing.TERMINATE)
            except (OSError, RuntimeError):
                pass
            self.upstream.close()
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass
        if self._started_event:
            self.ctx.audit.post([self._session_event("end", status=status, error=error)])
        if self.machine.phase is not Phase.CLOSED:
            self.machine.phase = Phase.CLOSED
