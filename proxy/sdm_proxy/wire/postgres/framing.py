"""PostgreSQL v3 framing: pure parsing and encoding, no I/O.

Two frame shapes exist. Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
CancelRequest) are ``int32 length | int32 code | body``; every later message is
``byte type | int32 length | body`` where the length counts itself but not the type byte.

Everything here is bounded *before* memory is committed: a length is checked against the limit for
its kind as soon as its four bytes are in, so a client cannot make the gateway buffer a gigabyte by
announcing one. ``MessageSplitter`` walks a byte stream header by header and hands back the bytes
to forward untouched, so the relay does no per-row work beyond reading five header bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import ClientProtocolError, ServerProtocolError, WireError

try:  # the DataRow header hop, compiled at install time (_rowhop.c); the same loop in Python otherwise
    from ._rowhop import hop as _hop_datarows
except ImportError:  # pragma: no cover - installed without a C compiler
    _hop_datarows = None

# ---- constants -----------------------------------------------------------------------------------

PROTOCOL_V3 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

MAX_STARTUP_PACKET = 10_000  # PostgreSQL's own MAX_STARTUP_PACKET_LENGTH
MAX_MESSAGE = (1 << 30) - 1  # 1 GiB - 1: PostgreSQL's PQ_LARGE_MESSAGE_LIMIT
MAX_AUTH_MESSAGE = 8192  # password / SASL messages: a token is at most 1 KiB
MAX_SMALL_MESSAGE = 1 << 20  # server messages the gateway parses (CommandComplete, ErrorResponse, ...)

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HDR = struct.Struct("!BI")  # type byte, length
_II = struct.Struct("!ii")
_III = struct.Struct("!iii")
_IIII = struct.Struct("!iiii")


def _type(letter: str) -> int:
    return ord(letter)


# ---- startup-phase packets -----------------------------------------------------------------------


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: int

    def __repr__(self) -> str:  # the cancel secret is a (weak) credential: keep it out of logs
        return f"CancelRequest(pid={self.pid})"


@dataclass(frozen=True)
class StartupMessage:
    major: int
    minor: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def protocol_extensions(self) -> list[str]:
        """``_pq_.*`` options: protocol extensions we do not implement (answered via NegotiateProtocolVersion)."""
        return [k for k in self.params if k.startswith("_pq_.")]


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def startup_packet_length(header: bytes) -> int:
    """Validate the 4-byte length that opens a startup packet (before reading the rest)."""
    if len(header) < 4:
        raise ClientProtocolError("incomplete startup packet")
    (length,) = _I32.unpack_from(header)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ClientProtocolError(f"invalid length of startup packet ({length})")
    return length


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Parse one whole startup-phase packet (length prefix included)."""
    length = startup_packet_length(packet)
    if len(packet) != length:
        raise ClientProtocolError("incomplete startup packet")
    (code,) = _I32.unpack_from(packet, 4)
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if length != 8:
            raise ClientProtocolError("invalid length of encryption request packet")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if length != 16:
            raise ClientProtocolError("invalid length of cancel request packet")
        pid, secret = _II.unpack_from(packet, 8)
        return CancelRequest(pid, secret)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ClientProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            sqlstate="0A000")
    return StartupMessage(major, minor, _parse_params(packet[8:]))


def _parse_params(body: bytes) -> dict[str, str]:
    # name\0value\0 ... \0 ; the final terminator is mandatory.
    if not body or body[-1] != 0:
        raise ClientProtocolError("invalid startup packet layout: expected terminator as last byte")
    parts = body[:-1].split(b"\0")
    if parts == [b""]:
        return {}
    if parts[-1] != b"" or len(parts) % 2 != 1:
        raise ClientProtocolError("invalid startup packet layout: parameter without value")
    parts = parts[:-1]
    params: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        name = _text(parts[i])
        if not name:
            raise ClientProtocolError("invalid startup packet layout: empty parameter name")
        params[name] = _text(parts[i + 1])
    return params


def _text(raw: bytes) -> str:
    # Names arrive in the client's encoding; surrogateescape keeps odd bytes without failing here
    # (the audit layer turns them into U+FFFD).
    return raw.decode("utf-8", "surrogateescape")


# ---- regular messages ------------------------------------------------------------------------------


def read_cstring(buf: bytes, offset: int = 0) -> tuple[str, int]:
    """A NUL-terminated string starting at ``offset``; returns (text, offset after the NUL)."""
    end = buf.find(b"\0", offset)
    if end < 0:
        raise ClientProtocolError("invalid message format: unterminated string")
    return _text(buf[offset:end]), end + 1


@dataclass(frozen=True)
class Message:
    """One message the splitter reports: its type, payload (None when only observed) and offset."""

    type: int
    payload: bytes | None
    start: int  # offset of the type byte within the ``forward`` bytes of the same feed() call
    rows: int = 0  # DataRow messages seen since the previous reported message
    truncated: bool = False  # payload is only the first bytes (prefix mode)


class MessageSplitter:
    """Incremental header walker for one direction of a relayed connection.

    ``feed(data)`` returns ``(messages, forward)``. ``forward`` is every byte that may be passed on
    now, in order and untouched; bytes of an incomplete *parsed* message are held back until it is
    whole. Message types in ``full`` are reported with their payload (their length is capped at
    ``max_full``); types in ``observe`` are reported by type only; everything else streams through
    in whatever pieces it arrives. Types in ``prefix`` (type -> n) are reported with at most their
    first n payload bytes (``Message.truncated`` tells) and the rest streams through, so a huge Bind
    is never held in memory. DataRow ('D') messages are counted, never copied.
    """

    __slots__ = (
        "_buf",
        "_datarow",
        "_error",
        "_full",
        "_limits",
        "_max_any",
        "_max_full",
        "_need",
        "_observe",
        "_prefix",
        "_rows",
        "_skip",
    )

    def __init__(self, *, full: Iterable[str], observe: Iterable[str] = (), max_full: int = MAX_SMALL_MESSAGE,
                 max_any: int = MAX_MESSAGE, limits: dict[str, int] | None = None,
                 prefix: dict[str, int] | None = None, count_rows: bool = False,
                 error: type[WireError] = ClientProtocolError):
        self._datarow = 68 if count_rows else -1  # 'D' is DataRow from a server, Describe from a client
        self._prefix = {_type(k): v for k, v in (prefix or {}).items()}
        self._full = frozenset(_type(t) for t in full) | frozenset(self._prefix)
        self._observe = frozenset(_type(t) for t in observe)
        self._max_full = max_full
        self._max_any = max_any
        self._limits = {_type(k): v for k, v in (limits or {}).items()}
        self._error = error
        self._buf = bytearray()  # held-back bytes: a partial header or a partial parsed message
        self._skip = 0  # bytes of a pass-through message still to come
        self._need = 0  # total bytes _buf must hold before parsing resumes
        self._rows = 0

    @property
    def at_boundary(self) -> bool:
        """True when everything forwarded so far ends exactly at a message boundary."""
        return self._skip == 0 and not self._buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[Message], bytes]:
        if self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                return [], data
            head, data = data[: self._skip], data[self._skip:]
            self._skip = 0
        else:
            head = b""
        if self._buf:
            if len(self._buf) + len(data) < self._need:
                self._buf += data  # still waiting for a big parsed message: no re-scan
                return [], head
            data = bytes(self._buf) + data
            self._buf.clear()
        msgs, fwd_end = self._scan(data, len(head))
        if fwd_end < len(data):
            self._buf += data[fwd_end:]
        forward = head + data[:fwd_end] if head else data[:fwd_end]
        return msgs, forward

    def _scan(self, data: bytes, base: int) -> tuple[list[Message], int]:
        msgs: list[Message] = []
        n = len(data)
        off = 0
        rows = self._rows
        full, observe, limits = self._full, self._observe, self._limits
        unpack = _HDR.unpack_from
        datarow = self._datarow
        hop = _hop_datarows
        while n - off >= 5:
            t, length = unpack(data, off)
            if t == datarow:
                # The hot path: a run of DataRows, nothing but header hops and a count.
                if hop is not None:  # compiled: no per-row Python work on the relay
                    off, walked, bad = hop(data, off, datarow)
                    rows += walked
                    if bad >= 0:
                        self._bad(t, bad)
                    if off > n:  # the last row continues in the next chunk
                        self._skip = off - n
                        off = n
                        break
                    continue
                while True:
                    if length < 4:
                        self._bad(t, length)
                    rows += 1
                    off += 1 + length
                    if n - off < 5:
                        break
                    t, length = unpack(data, off)
                    if t != datarow:
                        break
                if off > n:  # the last row continues in the next chunk
                    self._skip = off - n
                    off = n
                    break
                continue
            if length < 4:
                self._bad(t, length)
            end = off + 1 + length
            if t in full:
                cut = self._prefix.get(t)
                if cut is not None and length - 4 > cut:
                    if length > self._max_any:
                        self._bad(t, length)
                    if off + 5 + cut > n:
                        self._need = 5 + cut
                        break  # held back until the prefix is in
                    msgs.append(Message(t, data[off + 5:off + 5 + cut], base + off, rows, True))
                    rows = 0
                    if end > n:
                        self._skip = end - n
                        off = n
                        break
                    off = end
                    continue
                if length > limits.get(t, self._max_full):
                    self._bad(t, length)
                if end > n:
                    self._need = length + 1
                    break  # held back until whole
                msgs.append(Message(t, data[off + 5:end], base + off, rows))
                rows = 0
            else:
                if length > limits.get(t, self._max_any):
                    self._bad(t, length)
                if t in observe:
                    msgs.append(Message(t, None, base + off, rows))
                    rows = 0
                if end > n:
                    self._skip = end - n
                    off = n
                    break
            off = end
        else:
            self._need = 5
        self._rows = rows
        return msgs, off

    def _bad(self, t: int, length: int):
        shown = chr(t) if 32 < t < 127 else f"0x{t:02x}"
        if length < 4:
            raise self._error(f"invalid message length {length} for message type {shown!r}")
        raise self._error(f"message of type {shown!r} too large ({length} bytes)", sqlstate="54000")


def split_messages(data: bytes, *, error: type[WireError] = ServerProtocolError) -> list[tuple[int, bytes]]:
    """Every complete message in ``data`` (used on small, already-bounded buffers)."""
    out = []
    off, n = 0, len(data)
    while n - off >= 5:
        t, length = _HDR.unpack_from(data, off)
        if length < 4:
            raise error(f"invalid message length {length}")
        if off + 1 + length > n:
            break
        out.append((t, data[off + 5: off + 1 + length]))
        off += 1 + length
    if off != n:
        raise error("incomplete message")
    return out


# ---- payload parsers ---------------------------------------------------------------------------------


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields: {'S': 'ERROR', 'C': '42501', 'M': '...', ...}."""
    fields: dict[str, str] = {}
    off = 0
    n = len(payload)
    while off < n and payload[off] != 0:
        code = chr(payload[off])
        end = payload.find(b"\0", off + 1)
        if end < 0:
            raise ServerProtocolError("invalid ErrorResponse: unterminated field")
        fields[code] = payload[off + 1:end].decode("utf-8", "replace")
        off = end + 1
    return fields


_ROW_TAGS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY"})


def command_tag_rows(payload: bytes) -> int | None:
    """Rows from a CommandComplete tag ('SELECT 5', 'INSERT 0 3', 'COPY 10'); None for other commands."""
    tag = payload.rstrip(b"\0").decode("ascii", "replace")
    verb, _, rest = tag.partition(" ")
    if verb not in _ROW_TAGS or not rest:
        return None
    last = rest.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


# ---- encoders: what the gateway sends to clients ------------------------------------------------------


def _msg(t: str, body: bytes = b"") -> bytes:
    return _HDR.pack(ord(t), len(body) + 4) + body


def _cstr(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    return raw.replace(b"\0", b"?") + b"\0"


def authentication_ok() -> bytes:
    return _msg("R", _I32.pack(0))


def authentication_cleartext_password() -> bytes:
    return _msg("R", _I32.pack(3))


def parameter_status(name: str, value: str) -> bytes:
    return _msg("S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg("K", _II.pack(pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return _msg("Z", status)


def negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    body = _II.pack(newest_minor, len(unsupported)) + b"".join(_cstr(o) for o in unsupported)
    return _msg("v", body)


def _fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    return body + b"\0"


def error_response(sqlstate: str, message: str, *, severity: str = "ERROR", detail: str | None = None,
                   hint: str | None = None) -> bytes:
    return _msg("E", _fields(severity, sqlstate, message, detail, hint))


def notice_response(message: str, *, sqlstate: str = "00000", severity: str = "NOTICE") -> bytes:
    return _msg("N", _fields(severity, sqlstate, message, None, None))


# ---- encoders: what the gateway sends upstream (as a client) ----------------------------------------


def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_V3) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _II.pack(8, SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    return _IIII.pack(16, CANCEL_REQUEST_CODE, pid, secret)


def password_message(data: bytes) -> bytes:
    return _msg("p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return _msg("p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def terminate() -> bytes:
    return _msg("X")


def flush() -> bytes:
    return _msg("H")


FLUSH = flush()
TERMINATE = terminate()
