"""Capability and server-status flags, and the capability sets the gateway offers and passes on. Pure.

Their own module because every phase reads them: the handshake announces and negotiates the
capabilities, OK/EOF packets carry the status word, the response scanner follows DEPRECATE_EOF,
LOCAL_FILES and MORE_RESULTS_EXISTS, and the upstream login picks what to ask the database for.
"""

from __future__ import annotations

from enum import IntFlag


class Cap(IntFlag):
    """Capability flags (both directions)."""

    LONG_PASSWORD = 1 << 0  # MariaDB calls this CLIENT_MYSQL: unset means "MariaDB extended caps follow"
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTHENTICATION = 1 << 28
    CAPABILITY_EXTENSION = 1 << 29
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31


class Status(IntFlag):
    IN_TRANS = 0x0001
    AUTOCOMMIT = 0x0002
    MORE_RESULTS_EXISTS = 0x0008
    NO_GOOD_INDEX_USED = 0x0010
    NO_INDEX_USED = 0x0020
    CURSOR_EXISTS = 0x0040
    LAST_ROW_SENT = 0x0080
    DB_DROPPED = 0x0100
    NO_BACKSLASH_ESCAPES = 0x0200
    METADATA_CHANGED = 0x0400
    QUERY_WAS_SLOW = 0x0800
    PS_OUT_PARAMS = 0x1000
    IN_TRANS_READONLY = 0x2000
    SESSION_STATE_CHANGED = 0x4000


def cap_names(flags: int) -> str:
    return ", ".join(c.name for c in Cap if flags & c) or "none"


# What the gateway's front side offers. No COMPRESS: the relay forwards raw packets, and compression
# would hide them (clients then simply do not compress). No SESSION_TRACK / QUERY_ATTRIBUTES /
# OPTIONAL_RESULTSET_METADATA: they change packet formats the response scanner reads. No
# MULTI_STATEMENTS by default: one statement per COM_QUERY keeps KILL interception and audit exact.
FRONT_CAPABILITIES = (
    Cap.LONG_PASSWORD | Cap.FOUND_ROWS | Cap.LONG_FLAG | Cap.CONNECT_WITH_DB | Cap.ODBC | Cap.IGNORE_SPACE
    | Cap.PROTOCOL_41 | Cap.INTERACTIVE | Cap.IGNORE_SIGPIPE | Cap.TRANSACTIONS | Cap.SECURE_CONNECTION
    | Cap.MULTI_RESULTS | Cap.PS_MULTI_RESULTS | Cap.PLUGIN_AUTH | Cap.CONNECT_ATTRS
    | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.DEPRECATE_EOF
)

# Flags that change what the upstream sends or how it behaves for the client; the gateway asks the
# upstream for exactly the client's choice of these, so relayed packets mean the same on both legs.
PASS_THROUGH_CAPABILITIES = (
    Cap.FOUND_ROWS | Cap.LONG_FLAG | Cap.IGNORE_SPACE | Cap.INTERACTIVE | Cap.TRANSACTIONS | Cap.LOCAL_FILES
    | Cap.MULTI_STATEMENTS | Cap.MULTI_RESULTS | Cap.PS_MULTI_RESULTS | Cap.DEPRECATE_EOF | Cap.ODBC
)


def front_capabilities(*, tls: bool, local_infile: bool = False, multi_statements: bool = False) -> int:
    caps = FRONT_CAPABILITIES
    if tls:
        caps |= Cap.SSL
    if local_infile:
        caps |= Cap.LOCAL_FILES
    if multi_statements:
        caps |= Cap.MULTI_STATEMENTS
    return int(caps)
