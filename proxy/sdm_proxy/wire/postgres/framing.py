"""PostgreSQL v3 framing: pure parsing and encoding, no I/O.

Two frame shapes exist. Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
CancelRequest) are ``int32 length | int32 code | body``; every later message is
``byte type | int32 length | body`` where the length counts itself but not the type byte.

Everything here is bounded *before* memory is committed: a length is checked against the limit for
its kind as soon as its four bytes are in, so a client cannot make the gateway buffer a gigabyte by
announcing one. ``MessageSplitter`` walks a byte stream header by header and hands back the bytes
to forward untouched, so the relay does no per-row work beyond reading five header bytes.

The code lives in four modules; this one is the layer's front door (``from . import framing``) and
only re-exports the names the rest of the package and its tests use:

* ``framing_consts``   -- startup codes, size limits, struct layouts.
* ``framing_parse``    -- startup-phase packets and the payloads the gateway reads (C strings,
  ErrorResponse fields, CommandComplete tags).
* ``framing_splitter`` -- ``MessageSplitter`` and its ``Message`` records (the relay's hot path, with
  the compiled DataRow hop ``_rowhop``), and ``split_messages`` for small bounded buffers.
* ``framing_encode``   -- every message the gateway builds itself, to clients and to upstreams.
"""

from __future__ import annotations

# re-exported: every name below is used as ``framing.<name>`` by the modules listed (kept importable here)
from .framing_consts import MAX_AUTH_MESSAGE  # session.py
from .framing_encode import (
    FLUSH,  # session_relay.py
    TERMINATE,  # session_close.py, spares.py
    authentication_cleartext_password,  # session.py
    authentication_ok,  # session_relay.py
    backend_key_data,  # session_relay.py
    cancel_request,  # upstream.py
    error_response,  # server.py, session_close.py, session_relay.py, tests/wire/test_pg_units.py
    negotiate_protocol_version,  # session.py
    parameter_status,  # session_relay.py
    password_message,  # auth.py
    ready_for_query,  # session_relay.py
    sasl_initial_response,  # auth.py
    ssl_request,  # upstream.py
    startup_message,  # upstream.py
)
from .framing_parse import (
    CancelRequest,  # session.py, session_relay.py, tests/wire/test_pg_units.py
    GSSENCRequest,  # session.py, tests/wire/test_pg_units.py
    SSLRequest,  # session.py, tests/wire/test_pg_units.py
    StartupMessage,  # session.py, tests/wire/test_pg_units.py
    StartupPacket,  # session.py
    command_tag_rows,  # tests/wire/test_pg_units.py
    parse_error_fields,  # upstream.py, tests/wire/test_pg_units.py
    parse_startup_packet,  # session.py, tests/wire/test_pg_units.py, tests/wire/test_pg_fuzz.py
    read_cstring,  # session_relay.py, upstream.py
    startup_packet_length,  # session.py
)
from .framing_splitter import (
    MessageSplitter,  # relay.py, session*.py, tests/wire/test_pg_units.py, tests/wire/test_pg_fuzz.py
    split_messages,  # tests/wire/test_pg_units.py
)

__all__ = [
    "FLUSH",
    "MAX_AUTH_MESSAGE",
    "TERMINATE",
    "CancelRequest",
    "GSSENCRequest",
    "MessageSplitter",
    "SSLRequest",
    "StartupMessage",
    "StartupPacket",
    "authentication_cleartext_password",
    "authentication_ok",
    "backend_key_data",
    "cancel_request",
    "command_tag_rows",
    "error_response",
    "negotiate_protocol_version",
    "parameter_status",
    "parse_error_fields",
    "parse_startup_packet",
    "password_message",
    "read_cstring",
    "ready_for_query",
    "sasl_initial_response",
    "split_messages",
    "ssl_request",
    "startup_message",
    "startup_packet_length",
]
