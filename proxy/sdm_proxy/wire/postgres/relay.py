"""Upstream -> client relay, driven by transport callbacks (see ``UpstreamRelay``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ...audit import events as audit
from . import framing
from .errors import ServerProtocolError
from .tracker import SERVER_OBSERVED, SERVER_PARSED
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    from .session import Session

CLIENT_WRITE_HIGH = 1 << 18  # client transport buffer above which upstream reading pauses
COALESCE_BELOW = 1 << 16  # mid-result, hold upstream data below this size for up to COALESCE_DELAY
COALESCE_DELAY = 0.0005
PARAMETER_STATUS = ord("S")


class UpstreamRelay(asyncio.Protocol):
    """Upstream -> client, driven by the transport's callbacks (no task hop per chunk).

    Why not a stream pump: at bulk rates the database hands us ~8-16 KiB per read, and a StreamReader
    costs two loop iterations and two copies per read. Here each chunk is scanned and written in one
    callback; mid-result, chunks smaller than COALESCE_BELOW are held for up to COALESCE_DELAY so the
    client is woken per ~64 KiB instead of per 8 KiB. Backpressure: when the client's transport
    buffer passes its high-water mark, upstream reading pauses until it drains.
    """

    def __init__(self, session: Session):
        self.s = session
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.splitter = framing.MessageSplitter(full=SERVER_PARSED, observe=SERVER_OBSERVED, count_rows=True,
                                                error=ServerProtocolError)
        session._down_splitter = self.splitter
        self._out: list[bytes] = []
        self._out_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False  # paused for backpressure (client not keeping up)
        self._coalescing = False  # paused for a moment to batch small upstream packets
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._resumer: asyncio.Task | None = None
        self._stopped = False

    # -- wiring ------------------------------------------------------------------------------
    def attach(self, up: UpstreamConnection) -> None:
        """Take the logged-in upstream transport over from its StreamReader."""
        transport = up.writer.transport
        leftover = bytes(getattr(up.reader, "_buffer", b""))  # bytes that came right after ReadyForQuery
        transport.set_protocol(self)
        self.transport = transport
        if leftover:
            self.data_received(leftover)
        if not transport.is_reading():
            transport.resume_reading()
        if up.reader.at_eof():
            self._finish(None)

    def stop(self) -> None:
        self._stopped = True
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
        if self._resumer is not None:
            self._resumer.cancel()

    # -- upstream -> client ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        s = self.s
        boundary = self.splitter.at_boundary  # what the client has got so far ends here
        done: list = []  # statements this chunk finished: recorded once the client has the chunk
        try:
            msgs, forward = self.splitter.feed(data)
            if msgs:
                on_server = s.tracker.on_server
                for m in msgs:
                    if m.type == PARAMETER_STATUS:
                        s.check_parameter_status(m.payload)
                    finished = on_server(m.type, m.payload, m.rows)
                    if finished:
                        done += finished
                s._progress.set()
        except Exception as exc:  # noqa: BLE001 - ends this session only (ServerProtocolError, desync)
            if done:
                s._record_outcomes(done)
            self.flush()
            # Nothing of this chunk goes out, so a FATAL can follow only if the client's stream
            # already ended on a message boundary.
            s._stream_broken = not boundary
            self._stopped = True
            self._finish(exc)
            return
        if forward:
            self._out.append(forward)
            self._out_size += len(forward)
        if self._out_size >= COALESCE_BELOW or s.tracker.idle:
            self.flush()
        elif self._timer is None:
            # Mid-result and the database is slower than we are: stop reading for a moment so its
            # packets pile up in the socket buffer; the next read then takes them all at once.
            if not self._reading_paused and self.transport is not None:
                self.transport.pause_reading()
                self._coalescing = True
            self._timer = self.loop.call_later(COALESCE_DELAY, self.flush)
        if done:
            s._record_outcomes(done)  # after the client's write: off the result's critical path

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._coalescing:
            self._coalescing = False
            if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        client = self.s.writer.transport
        if client is None or client.is_closing():
            return
        client.write(data)
        if client.get_write_buffer_size() > CLIENT_WRITE_HIGH and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
            self._resumer = self.loop.create_task(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        try:
            await self.s.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._finish(exc)
            return
        self._reading_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.flush()
        self._finish(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.flush()
        self._finish(exc)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("upstream connection lost"))

    def _finish(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None or isinstance(exc, (ConnectionError, OSError)):
            self.done.set_result((audit.ERROR, "the database closed the connection"))
        else:
            self.done.set_exception(exc)

    # -- client -> upstream (the client pump writes through here) ----------------------------------
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("upstream connection closed")
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
