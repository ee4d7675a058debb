"""The two transports of a MySQL session as small asyncio Protocols (the I/O edge of the glue).

``ClientChannel`` is the client's socket: plain TCP, or TLS through ``tlsbio.TLSServerSession`` once
the client has sent an SSLRequest (MySQL clients pipeline their ClientHello behind it, so
``loop.start_tls`` cannot be used: it cannot be handed bytes already read). The session reads it
with ``await read()``; writes go straight to the transport.

``UpstreamChannel`` takes over the database connection after the login. A command's response is
followed by a ``ResponseScanner`` right in ``data_received``: each chunk is scanned (headers only)
and written to the client in the same callback, without a task hop per chunk. Backpressure both
ways: when the client's transport buffer passes its high-water mark, reading from the database
pauses until it drains; when the session is not reading the client (a response is in flight),
client input is buffered only up to a bound, then the client's transport is paused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .errors import ClientProtocolError, ServerProtocolError
from .responses import ResponseScanner
from .tlsbio import TLSServerSession

CLIENT_READ_HIGH = 1 << 20  # client bytes buffered while the session is busy: pause above this
CLIENT_WRITE_HIGH = 1 << 18  # client transport buffer above which the database is not read
UPSTREAM_WRITE_HIGH = 1 << 20


class ConnectionLost(Exception):
    """A peer went away in the middle of something (internal to the glue)."""


class ClientChannel(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.tls: TLSServerSession | None = None
        self._buf = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._reader: asyncio.Future | None = None
        self._interrupted = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self.lost = False
        # Set by the session: called when the client's transport can take more / must not.
        self.on_write_pause: Callable[[], None] | None = None
        self.on_write_resume: Callable[[], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_made: Callable[[ClientChannel], None] | None = None  # set by the listener

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)  # type: ignore[attr-defined]
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return  # the TLS layer already failed: nothing more is read from this client
        if self.tls is not None:
            try:
                data = self.tls.receive(data)
            except ClientProtocolError as exc:
                self._error = exc
                self._wake()
                return
            self._flush_tls()
            if self.tls.closed:
                self._eof = True
        if data:
            self._buf += data
            if len(self._buf) > CLIENT_READ_HIGH and not self._read_paused and self.transport is not None:
                self._read_paused = True
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        if self.tls is not None:
            try:
                self._buf += self.tls.receive(b"")
            except ClientProtocolError:
                pass
        self._eof = True
        self._wake()
        return True  # keep the transport: a half-closed client still reads our answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._eof = True
        self._wake()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(ConnectionLost("the client closed the connection"))
        self._drain_waiters.clear()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.on_write_pause is not None:
            self.on_write_pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        if self.on_write_resume is not None:
            self.on_write_resume()

    # -- for the session ------------------------------------------------------------------------

    def start_tls(self, tls: TLSServerSession) -> None:
        """From now on, bytes in both directions go through ``tls`` (it may hold a ClientHello)."""
        self.tls = tls
        try:
            plain = tls.start()
        finally:
            self._flush_tls()
        if plain:
            self._buf += plain

    def _flush_tls(self) -> None:
        out = self.tls.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _wake(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def interrupt(self) -> None:
        """Make a pending ``read()`` return None (the session has something else to do)."""
        self._interrupted = True
        self._wake()

    async def read(self) -> bytes | None:
        """Whatever the client sent (b"" at EOF), or None when ``interrupt`` was called."""
        while True:
            if self._error is not None:
                raise self._error
            if self._interrupted:
                self._interrupted = False
                return None
            if self._buf:
                data = bytes(self._buf)
                self._buf.clear()
                if self._read_paused and self.transport is not None and not self.lost:
                    self._read_paused = False
                    self.transport.resume_reading()
                return data
            if self._eof:
                return b""
            self._reader = self.loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buf

    def write(self, data: bytes) -> None:
        if not data or self.transport is None or self.transport.is_closing():
            return
        if self.tls is not None:
            try:
                self.tls.send(data)
            except ClientProtocolError:
                return
            self._flush_tls()
        else:
            self.transport.write(data)

    @property
    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionLost("the client closed the connection")
        if self._write_paused:
            fut = self.loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class UpstreamChannel(asyncio.Protocol):
    """The logged-in database connection; ``relay`` follows one command's response to the client."""

    def __init__(self, client: ClientChannel):
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.scanner: ResponseScanner | None = None
        self.forwarded = 0  # response bytes already passed to the client (for the current command)
        self._waiter: asyncio.Future | None = None
        self._paused_for_client = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self.closed = False
        self.unsolicited = b""  # what the server sent while no command was in flight
        self.on_idle_close: Callable[[], None] | None = None  # the database hung up between commands
        self._keep: bytearray | None = None  # the gateway's own query: its answer, kept here

    # -- wiring ---------------------------------------------------------------------------------

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Take the logged-in transport over from the StreamReader used for the login."""
        self._streams = (reader, writer)  # StreamWriter.__del__ would close the transport under us
        transport = writer.transport
        leftover = bytes(getattr(reader, "_buffer", b""))
        transport.set_protocol(self)
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=UPSTREAM_WRITE_HIGH)  # type: ignore[attr-defined]
        if leftover:
            self.data_received(leftover)
        if reader.at_eof():
            self.connection_lost(None)
        elif not transport.is_reading():  # type: ignore[attr-defined]
            transport.resume_reading()  # type: ignore[attr-defined]
        self.client.on_write_pause = self._client_full
        self.client.on_write_resume = self._client_drained

    # -- commands -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionLost("the database closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionLost("the database closed the connection")
        if self._write_paused:
            fut = self.loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def expect(self, scanner: ResponseScanner, *, keep: bytearray | None = None) -> None:
        """Follow ``scanner``'s response from now on: call before sending the command (the answer
        may arrive before the sender gets to ``relay``). ``keep``: the response goes there, not to
        the client (the gateway's own query)."""
        if self.closed:
            raise ConnectionLost("the database closed the connection")
        if self.unsolicited:
            # The server spoke between commands without hanging up: nothing the gateway can relay.
            raise ServerProtocolError("upstream sent data between commands")
        self.scanner = scanner
        self.forwarded = 0
        self._keep = keep
        self._waiter = self.loop.create_future()

    async def relay(self) -> None:
        """Wait until the expected response has been passed to the client in full."""
        waiter = self._waiter
        try:
            await waiter
        finally:
            self.reset()

    def reset(self) -> None:
        waiter, self._waiter, self.scanner = self._waiter, None, None
        if waiter is not None and not waiter.done():
            waiter.cancel()

    def abort_relay(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    # -- asyncio callbacks ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        scanner = self.scanner
        waiter = self._waiter
        if scanner is None or waiter is None or waiter.done():
            # Between commands a server speaks only to say goodbye (shutdown, KILL): keep it.
            if len(self.unsolicited) < 4096:
                self.unsolicited += data[:4096]
            return
        try:
            used = scanner.feed(data)
        except ServerProtocolError as exc:
            waiter.set_exception(exc)
            return
        if used:
            chunk = data if used == len(data) else data[:used]
            if self._keep is not None:
                self._keep += chunk
            else:
                self.client.write(chunk)
                self.forwarded += used
        if used < len(data):
            waiter.set_exception(ServerProtocolError("upstream sent data after the end of a response"))
            return
        if scanner.done:
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self, *, by_us: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(ConnectionLost("the database connection was closed"))
        self._drain_waiters.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionLost("the database closed the connection"))
        elif self.on_idle_close is not None and not by_us:
            self.on_idle_close()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    # -- backpressure from the client -----------------------------------------------------------

    def _client_full(self) -> None:
        if not self._paused_for_client and self.transport is not None and not self.transport.is_closing():
            self._paused_for_client = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def _client_drained(self) -> None:
        if self._paused_for_client:
            self._paused_for_client = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Hang up (a response in flight fails with ConnectionLost)."""
        self._gone(by_us=True)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
