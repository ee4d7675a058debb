"""OK, ERR and EOF: the generic response packets, built by the gateway and parsed from the upstream. Pure.

Their own module because every phase uses them, on both sides of the gateway: an ERR instead of
the upstream's greeting, the OK / ERR that end an auth exchange, the gateway's own answers to the
client, and the terminators the response scanner reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ServerProtocolError, WireError, err_fields
from .flags import Status
from .packets import PayloadReader, lenenc_int

OK_HEADER, EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER = 0x00, 0xFE, 0xFF, 0xFB


@dataclass(frozen=True)
class OkPacket:
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = int(Status.AUTOCOMMIT)
    warnings: int = 0
    info: bytes = b""


@dataclass(frozen=True)
class ErrPacket:
    code: int
    sqlstate: str
    message: str


@dataclass(frozen=True)
class EofPacket:
    warnings: int
    status: int


def build_ok(*, affected_rows: int = 0, last_insert_id: int = 0, status: int = int(Status.AUTOCOMMIT),
             warnings: int = 0, info: bytes = b"", header: int = OK_HEADER) -> bytes:
    """An OK packet (PROTOCOL_41, no SESSION_TRACK); ``header=0xFE`` for a DEPRECATE_EOF terminator."""
    return (bytes((header,)) + lenenc_int(affected_rows) + lenenc_int(last_insert_id)
            + (status & 0xFFFF).to_bytes(2, "little") + (warnings & 0xFFFF).to_bytes(2, "little") + info)


def build_eof(*, warnings: int = 0, status: int = int(Status.AUTOCOMMIT)) -> bytes:
    return bytes((EOF_HEADER,)) + (warnings & 0xFFFF).to_bytes(2, "little") + (status & 0xFFFF).to_bytes(2, "little")


def build_err(code: int, sqlstate: str, message: str, *, protocol41: bool = True) -> bytes:
    """An ERR packet. Messages are capped: the client shows them on one line."""
    body = message.encode("utf-8", "replace")[:2000]
    out = bytes((ERR_HEADER,)) + (code & 0xFFFF).to_bytes(2, "little")
    if protocol41:
        state = sqlstate.encode("ascii", "replace")[:5].ljust(5, b"0")
        out += b"#" + state
    return out + body


def build_err_for(exc: BaseException, *, protocol41: bool = True) -> bytes:
    code, sqlstate, message = err_fields(exc)
    return build_err(code, sqlstate, message, protocol41=protocol41)


def parse_ok(payload: bytes, *, error: type[WireError] = ServerProtocolError) -> OkPacket:
    """OK (0x00) or DEPRECATE_EOF terminator (0xFE) with PROTOCOL_41; info is whatever follows."""
    r = PayloadReader(payload, error=error, what="OK packet", pos=1)
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = r.u16() if r.remaining >= 2 else 0
    warnings = r.u16() if r.remaining >= 2 else 0
    return OkPacket(affected, insert_id, status, warnings, r.rest())


def parse_eof(payload: bytes, *, error: type[WireError] = ServerProtocolError) -> EofPacket:
    r = PayloadReader(payload, error=error, what="EOF packet", pos=1)
    if r.remaining < 4:
        return EofPacket(0, 0)  # pre-4.1 EOF: no fields
    warnings = r.u16()
    return EofPacket(warnings, r.u16())


def parse_err(payload: bytes, *, protocol41: bool = True, error: type[WireError] = ServerProtocolError) -> ErrPacket:
    """ERR packet. The SQLSTATE marker is optional (absent before the handshake completes)."""
    r = PayloadReader(payload, error=error, what="ERR packet", pos=1)
    code = r.u16()
    sqlstate = "HY000"
    if r.peek() == ord("#") and r.remaining >= 6:
        r.skip(1)
        sqlstate = r.take(5).decode("ascii", "replace")
    return ErrPacket(code, sqlstate, r.rest().decode("utf-8", "replace"))
