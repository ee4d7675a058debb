"""MySQL packet framing: pure parsing and encoding, no I/O.

A packet is ``int<3> payload length (LE) | int<1> sequence id | payload``. A payload of 16 MiB - 1
(0xFFFFFF) or more travels as several frames: every full frame says "more follows", and a payload
whose length is an exact multiple of 0xFFFFFF ends with an empty frame.

Sequence ids restart at 0 with every command (and with the server's greeting) and go up by one per
frame in either direction; each leg of the gateway (client<->gateway, gateway<->upstream) keeps its
own during login, and they coincide in the command phase because commands are relayed unchanged.

Everything is bounded *before* memory is committed: ``PacketReader`` checks a frame's announced
length against its limit as soon as the 4 header bytes are in, so a peer cannot make the gateway
buffer a gigabyte by announcing one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import (
    ER_NET_PACKET_TOO_LARGE,
    ER_NET_PACKETS_OUT_OF_ORDER,
    ER_NET_READ_ERROR,
    ClientProtocolError,
    ServerProtocolError,
    WireError,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_COMMAND_PACKET",
    "MAX_FRAME",
    "MAX_HANDSHAKE_PACKET",
    "MAX_SERVER_CONTROL_PACKET",
    "ClientProtocolError",
    "Packet",
    "PacketReader",
    "PayloadReader",
    "ServerProtocolError",
    "frame",
    "frame_packets",
    "lenenc_bytes",
    "lenenc_int",
]

MAX_FRAME = 0xFFFFFF  # largest payload in one frame; a frame this size means "more follows"
HEADER_SIZE = 4

# Limits on a reassembled payload, per use. The command limit plays max_allowed_packet's role.
MAX_COMMAND_PACKET = 64 << 20  # client commands (COM_QUERY text, STMT_EXECUTE with blobs)
MAX_HANDSHAKE_PACKET = 64 << 10  # HandshakeResponse41 (connect attrs are at most 64 KiB) and tokens
MAX_SERVER_CONTROL_PACKET = 1 << 20  # server packets the gateway parses whole (greeting, OK, ERR)


@dataclass(frozen=True, slots=True)
class Packet:
    """One reassembled payload; ``seq`` is the first frame's id, ``last_seq`` the last one's."""

    seq: int
    last_seq: int
    payload: bytes

    @property
    def next_seq(self) -> int:
        return (self.last_seq + 1) & 0xFF

    def __repr__(self) -> str:  # payloads may hold tokens or SQL: show the shape only
        return f"Packet(seq={self.seq}, last_seq={self.last_seq}, len={len(self.payload)})"


class PacketReader:
    """Incremental reader: ``feed`` bytes, then call ``next_packet`` until it returns None.

    ``error`` is the exception type for a misbehaving peer (ClientProtocolError for the client leg,
    ServerProtocolError for the upstream leg). ``expect_seq`` (None: unchecked) is the id the next
    frame must carry; it advances by one per frame and is reset by the caller at command starts.
    """

    __slots__ = ("_buf", "_error", "_first_seq", "_parts", "_peer", "_pos", "_total", "expect_seq", "limit")

    def __init__(self, *, limit: int, error: type[WireError] = ClientProtocolError, expect_seq: int | None = 0):
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.expect_seq = expect_seq
        self._error = error
        self._peer = "client" if issubclass(error, ClientProtocolError) else "server"
        self._buf = bytearray()
        self._pos = 0
        self._parts: list[bytes] = []
        self._total = 0
        self._first_seq = -1

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]  # compact: amortised O(1) per byte
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned in a packet (including a partial reassembly)."""
        return len(self._buf) - self._pos + self._total

    @property
    def in_packet(self) -> bool:
        """True while a split payload is half reassembled or a frame is half received."""
        return bool(self._parts) or len(self._buf) > self._pos

    def take_unread(self) -> bytes:
        """Every byte fed but not consumed (e.g. to check nothing came before a TLS handshake)."""
        rest = bytes(self._buf[self._pos:])
        self._buf.clear()
        self._pos = 0
        return rest

    def next_packet(self) -> Packet | None:
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) - pos < HEADER_SIZE:
                return None
            length = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            seq = buf[pos + 3]
            expected = self.expect_seq
            if expected is not None and seq != expected:
                raise self._error(f"got packets out of order from the {self._peer} "
                                  f"(sequence id {seq}, expected {expected})", code=ER_NET_PACKETS_OUT_OF_ORDER)
            # Bound before waiting for (and buffering) the body.
            if self._total + length > self.limit:
                raise self._error(f"the {self._peer} sent a packet larger than the gateway accepts here "
                                  f"({self.limit} bytes)", code=ER_NET_PACKET_TOO_LARGE)
            end = pos + HEADER_SIZE + length
            if len(buf) < end:
                return None
            if not self._parts:
                self._first_seq = seq
            self._parts.append(bytes(buf[pos + HEADER_SIZE:end]))
            self._total += length
            self._pos = end
            if expected is not None:
                self.expect_seq = (seq + 1) & 0xFF
            if length == MAX_FRAME:
                continue  # more frames follow (possibly an empty one)
            payload = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            packet = Packet(self._first_seq, seq, payload)
            self._parts = []
            self._total = 0
            return packet


def frame_packets(payload: bytes | bytearray | memoryview, seq: int) -> tuple[bytes, int]:
    """Frame ``payload`` starting at ``seq``; returns (bytes to send, next sequence id).

    Payloads of 0xFFFFFF bytes or more are split; an exact multiple ends with an empty frame.
    """
    n = len(payload)
    if n < MAX_FRAME:  # the common case: one frame, no copies beyond the join
        return bytes((n & 0xFF, (n >> 8) & 0xFF, n >> 16, seq & 0xFF)) + bytes(payload), (seq + 1) & 0xFF
    view = memoryview(payload)
    parts = []
    offset = 0
    while True:
        chunk = view[offset:offset + MAX_FRAME]
        size = len(chunk)
        parts.append(bytes((size & 0xFF, (size >> 8) & 0xFF, size >> 16, seq & 0xFF)))
        parts.append(bytes(chunk))
        seq = (seq + 1) & 0xFF
        offset += size
        if size < MAX_FRAME:
            return b"".join(parts), seq


def frame(payload: bytes | bytearray | memoryview, seq: int) -> bytes:
    """Frame ``payload`` starting at ``seq`` (see ``frame_packets``)."""
    return frame_packets(payload, seq)[0]


# ---- length-encoded values -----------------------------------------------------------------------


def lenenc_int(value: int) -> bytes:
    if value < 0 or value >= 1 << 64:
        raise ValueError("length-encoded integers are unsigned 64-bit")
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def lenenc_bytes(data: bytes) -> bytes:
    return lenenc_int(len(data)) + data


class PayloadReader:
    """Bounds-checked reads from one payload; any overrun raises the peer's protocol error type.

    Why a class and not struct.unpack_from everywhere: every read checks the remaining length, so a
    truncated or lying packet becomes ``error(code, sqlstate, "malformed <what>")`` and never an
    IndexError or struct.error.
    """

    __slots__ = ("_code", "_error", "_sqlstate", "_what", "data", "pos")

    def __init__(self, data: bytes, *, error: type[WireError] = ClientProtocolError, what: str = "packet",
                 code: int = ER_NET_READ_ERROR, sqlstate: str | None = None, pos: int = 0):
        self.data = data
        self.pos = pos
        self._error = error
        self._what = what
        self._code = code
        self._sqlstate = sqlstate

    def fail(self, reason: str) -> WireError:
        return self._error(f"malformed {self._what}: {reason}", code=self._code, sqlstate=self._sqlstate)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def _need(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > len(self.data):
            raise self.fail("truncated")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.data[self._need(1)]

    def uint(self, n: int) -> int:
        pos = self._need(n)
        return int.from_bytes(self.data[pos:pos + n], "little")

    def u16(self) -> int:
        return self.uint(2)

    def u24(self) -> int:
        return self.uint(3)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return bytes(self.data[pos:pos + n])

    def skip(self, n: int) -> None:
        self._need(n)

    def rest(self) -> bytes:
        pos, self.pos = self.pos, len(self.data)
        return bytes(self.data[pos:])

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def cstring(self, *, allow_eof: bool = False) -> bytes:
        """A NUL-terminated string; ``allow_eof`` also accepts one that runs to the packet's end."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            if not allow_eof:
                raise self.fail("missing NUL terminator")
            return self.rest()
        value = bytes(self.data[self.pos:end])
        self.pos = end + 1
        return value

    def lenenc_int_or_null(self) -> int | None:
        first = self.u8()
        if first < 0xFB:
            return first
        if first == 0xFB:
            return None
        if first == 0xFC:
            return self.uint(2)
        if first == 0xFD:
            return self.uint(3)
        if first == 0xFE:
            return self.uint(8)
        raise self.fail("invalid length-encoded integer")

    def lenenc_int(self) -> int:
        value = self.lenenc_int_or_null()
        if value is None:
            raise self.fail("unexpected NULL length")
        return value

    def lenenc_bytes(self) -> bytes:
        n = self.lenenc_int()
        if n > self.remaining:  # checked before slicing: never trust an announced length
            raise self.fail("length-encoded string longer than the packet")
        return self.take(n)

    def text(self, raw: bytes, field: str) -> str:
        """Decode a text field as UTF-8 (names, SQL); invalid bytes are the peer's error."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{field} is not valid UTF-8") from None
