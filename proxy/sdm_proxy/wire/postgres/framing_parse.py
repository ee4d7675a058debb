"""PostgreSQL v3 decoding of whole messages: startup-phase packets and the few payloads the gateway reads.

Separate from ``framing_splitter`` (which only finds message boundaries in a stream) and from
``framing_encode`` (what the gateway sends): everything here turns one complete, already-bounded
packet or payload into Python values, and raises a ``WireError`` when it is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ClientProtocolError, ServerProtocolError
from .framing_consts import (
    _I32,
    _II,
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET,
    SSL_REQUEST_CODE,
)

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


# ---- payload parsers ---------------------------------------------------------------------------------


def read_cstring(buf: bytes, offset: int = 0) -> tuple[str, int]:
    """A NUL-terminated string starting at ``offset``; returns (text, offset after the NUL)."""
    end = buf.find(b"\0", offset)
    if end < 0:
        raise ClientProtocolError("invalid message format: unterminated string")
    return _text(buf[offset:end]), end + 1


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


MAX_COMMAND_NAME = 64


def command_tag(payload: bytes) -> tuple[str, int | None]:
    """A CommandComplete tag's command ('SELECT 5' -> 'SELECT', 'INSERT 0 3' -> 'INSERT',
    'CREATE TABLE' as it is) and its rows (None for commands without a count)."""
    tag = payload.rstrip(b"\0").decode("ascii", "replace")
    verb, _, rest = tag.partition(" ")
    if verb not in _ROW_TAGS or not rest:
        return tag[:MAX_COMMAND_NAME], None
    last = rest.rsplit(" ", 1)[-1]
    # A row count fits 20 digits (64 bits); int() of a server's thousands of digits would raise.
    return verb, (int(last) if last.isdigit() and len(last) <= 20 else None)


def command_tag_rows(payload: bytes) -> int | None:
    """Rows from a CommandComplete tag ('SELECT 5', 'INSERT 0 3', 'COPY 10'); None for other commands."""
    return command_tag(payload)[1]
