"""PostgreSQL v3 framing constants: startup codes, size limits and the struct layouts.

A leaf module on its own because every other framing module (``framing_parse``,
``framing_splitter``, ``framing_encode``) needs these numbers and none of them needs the others.
"""

from __future__ import annotations

import struct

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

