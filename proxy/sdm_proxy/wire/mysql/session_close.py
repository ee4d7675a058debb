"""How a MySQL session ends: the ``_Close`` signal, the last ERR, the upstream's QUIT, ``session.end``.

Also the two hang-up callbacks (the database between commands, the client at any time): they
arrange for the end at the next packet boundary rather than end anything themselves.
"""

from __future__ import annotations

import asyncio

from ...audit import events as audit
from .channel import ConnectionLost
from .errors import ConnectionEnded, WireError
from .machine import Phase
from .ok_err_eof import ERR_HEADER, parse_err
from .upstream import COM_QUIT


class _Close(Exception):
    """Internal: end the connection; ``error`` (if any) becomes the last ERR the client gets."""

    def __init__(self, error: BaseException | None, *, status: str = audit.ERROR, reason: str | None = None,
                 audit_denied: bool = False, seq: int | None = None):
        reason = reason if reason is not None else _message(error)
        super().__init__(reason)
        self.error = error
        self.status = status
        self.reason = reason
        self.audit_denied = audit_denied
        self.seq = seq


def _message(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed"
    return getattr(exc, "message", None) or type(exc).__name__


class ClosingPhase:
    """Mixed into ``Session`` (its state is set up in ``Session.__init__``): ending the connection."""

    def _on_upstream_gone(self) -> None:
        """The database hung up between commands (KILL CONNECTION, server shutdown)."""
        if self._goodbye is not None or self._ended is not None:
            return
        message = "the database closed the connection"
        raw = self.up.unsolicited if self.up is not None else b""
        if len(raw) > 4 and raw[4] == ERR_HEADER:
            try:
                err = parse_err(raw[4:4 + int.from_bytes(raw[:3], "little")])
                message = f"the database closed the connection: ({err.code}) {err.message}"
            except WireError:
                pass
        self._goodbye = (ConnectionEnded(message), audit.ERROR, message)
        self.client.interrupt()

    def _on_client_lost(self) -> None:
        self._client_gone = True
        if self._cmd is not None and self.up is not None:
            self.up.abort_relay(ConnectionLost("the client closed the connection"))

    async def _send_final(self, error: BaseException | None, seq: int | None) -> None:
        """The last ERR, where the client can read it: not inside a half-sent answer or TLS handshake."""
        client = self.client
        if error is None or client.lost or client.transport is None or client.transport.is_closing():
            return
        if client.tls is not None and not client.tls.handshake_done:
            return
        if self._answered:
            return  # part of an answer went out: an ERR now would be read as a row
        if self.front.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        try:
            self.front.fail(error, seq=seq)
            self._flush()
            async with asyncio.timeout(2):
                await client.drain()
        except (ConnectionLost, OSError, TimeoutError, RuntimeError, WireError):
            pass

    def _close_upstream(self) -> None:
        up = self.up
        if up is None:
            return
        self.up = None if self._cmd is None else up  # a relay in flight still needs it to fail cleanly
        try:
            if not up.closed and self._cmd is None:
                up.send(COM_QUIT)
        except (ConnectionLost, OSError, RuntimeError):
            pass
        up.close()

    def _finish(self, status: str, error: str | None) -> None:
        self.ctx.registry.unregister(self.connection_id)
        if self.up is not None:
            self._cmd = None
            self.up.reset()  # a relay cut short by cancellation leaves nobody waiting for its answer
            self._close_upstream()
            self.up = None
        self.client.close()
        if self._started_event:
            if self._ended is not None:
                status, error = self._ended
            self.ctx.audit.post([self._session_event("end", status=status, error=error)])
            self._started_event = False
        self._token = None
        if self.front.phase is not Phase.CLOSED:
            self.front.closed()
