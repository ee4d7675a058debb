"""The handshake, auth and generic-response packets the gateway builds and parses. Pure.

Front side (the gateway is the server): its own HandshakeV10, the client's SSLRequest and
HandshakeResponse41, an AuthSwitchRequest to ``mysql_clear_password`` and the session token that
comes back, OK and ERR packets, and COM_CHANGE_USER (a second login on the same connection).

Upstream side (the gateway is the client): the server's HandshakeV10, the gateway's own
SSLRequest/HandshakeResponse41, and the server's answers during auth (OK, ERR, AuthSwitchRequest,
AuthMoreData).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import IntFlag

from .errors import (
    ER_HANDSHAKE_ERROR,
    ER_NOT_SUPPORTED_AUTH_MODE,
    SQLSTATE_CONNECTION,
    SQLSTATE_REJECTED,
    ClientProtocolError,
    ServerProtocolError,
    UpstreamLoginError,
    WireError,
    err_fields,
)
from .packets import PayloadReader, lenenc_bytes, lenenc_int


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

DEFAULT_SERVER_VERSION = "8.0.0-sdm-gateway"
DEFAULT_CHARSET = 45  # utf8mb4_general_ci: known to MySQL 5.5+ and every MariaDB
DEFAULT_MAX_PACKET = 1 << 24
SCRAMBLE_LEN = 20

NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
SHA256_PASSWORD = "sha256_password"
CLEAR_PASSWORD = "mysql_clear_password"

OK_HEADER, EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER = 0x00, 0xFE, 0xFF, 0xFB
AUTH_MORE_DATA_HEADER = 0x01
MAX_TOKEN_LENGTH = 4096


def front_capabilities(*, tls: bool, local_infile: bool = False, multi_statements: bool = False) -> int:
    caps = FRONT_CAPABILITIES
    if tls:
        caps |= Cap.SSL
    if local_infile:
        caps |= Cap.LOCAL_FILES
    if multi_statements:
        caps |= Cap.MULTI_STATEMENTS
    return int(caps)


def new_scramble() -> bytes:
    """20 random printable bytes: no NUL (C clients treat the scramble as a string) and no '$'."""
    alphabet = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#%&()*+,-./:;<=>?@[]^_{|}~"
    return bytes(secrets.choice(alphabet) for _ in range(SCRAMBLE_LEN))


# ---- HandshakeV10 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerHandshake:
    """A HandshakeV10: the gateway builds one for its clients and parses the upstream's."""

    server_version: str
    connection_id: int
    scramble: bytes
    capabilities: int
    charset: int = DEFAULT_CHARSET
    status: int = int(Status.AUTOCOMMIT)
    auth_plugin: str = NATIVE_PASSWORD
    mariadb_capabilities: int = 0  # MariaDB's extended flags (only when LONG_PASSWORD is unset)
    protocol_version: int = 10

    @property
    def is_mariadb(self) -> bool:
        return "MariaDB" in self.server_version


def build_handshake(*, connection_id: int, scramble: bytes, capabilities: int,
                    server_version: str = DEFAULT_SERVER_VERSION, charset: int = DEFAULT_CHARSET,
                    status: int = int(Status.AUTOCOMMIT), auth_plugin: str = NATIVE_PASSWORD) -> bytes:
    """The gateway's own greeting (payload; frame it with sequence id 0)."""
    if len(scramble) != SCRAMBLE_LEN or b"\0" in scramble:
        raise ValueError("the scramble must be 20 bytes without NUL")
    out = bytearray(b"\x0a")
    out += server_version.encode("utf-8") + b"\0"
    out += (connection_id & 0xFFFFFFFF).to_bytes(4, "little")
    out += scramble[:8] + b"\0"
    out += (capabilities & 0xFFFF).to_bytes(2, "little")
    out += bytes((charset & 0xFF,))
    out += (status & 0xFFFF).to_bytes(2, "little")
    out += ((capabilities >> 16) & 0xFFFF).to_bytes(2, "little")
    out += bytes((SCRAMBLE_LEN + 1,))  # auth-plugin-data length, counting the trailing NUL
    out += b"\0" * 10
    out += scramble[8:] + b"\0"
    out += auth_plugin.encode("ascii") + b"\0"
    return bytes(out)


def parse_handshake(payload: bytes) -> ServerHandshake:
    """The upstream's greeting. An ERR packet instead (too many connections, host blocked) raises."""
    if payload[:1] == bytes((ERR_HEADER,)):
        err = parse_err(payload, protocol41=False, error=ServerProtocolError)
        raise UpstreamLoginError(f"upstream refused the connection: ({err.code}) {err.message}",
                                 code=err.code, sqlstate=err.sqlstate)
    r = PayloadReader(payload, error=ServerProtocolError, what="upstream handshake")
    version = r.u8()
    if version != 10:
        raise r.fail(f"unsupported protocol version {version} (need 10)")
    server_version = r.cstring().decode("utf-8", "replace")
    connection_id = r.u32()
    part1 = r.take(8)
    r.skip(1)
    caps = r.u16()
    charset = status = 0
    auth_len = 0
    part2 = b""
    plugin = ""
    mariadb_caps = 0
    if not r.at_end:
        charset = r.u8()
        status = r.u16()
        caps |= r.u16() << 16
        auth_len = r.u8()
        reserved = r.take(10)
        if not caps & Cap.LONG_PASSWORD:
            mariadb_caps = int.from_bytes(reserved[6:], "little")
        if caps & Cap.SECURE_CONNECTION:
            part2_len = max(13, auth_len - 8)
            part2 = r.take(min(part2_len, r.remaining))
            # The scramble proper is auth_len - 1 bytes (the last is a NUL); 20 for every plugin we speak.
            want = (auth_len - 1 - 8) if auth_len > 8 else 12
            part2 = part2[:max(0, want)]
        if caps & Cap.PLUGIN_AUTH:
            plugin = r.cstring(allow_eof=True).decode("ascii", "replace")
    if not caps & Cap.PROTOCOL_41:
        raise r.fail("the server does not speak protocol 4.1")
    return ServerHandshake(server_version=server_version, connection_id=connection_id, scramble=part1 + part2,
                           capabilities=caps, charset=charset, status=status,
                           auth_plugin=plugin or NATIVE_PASSWORD, mariadb_capabilities=mariadb_caps)


# ---- client hello: SSLRequest / HandshakeResponse41 ------------------------------------------------


@dataclass(frozen=True)
class SSLRequest:
    capabilities: int
    max_packet: int
    charset: int


@dataclass(frozen=True)
class HandshakeResponse:
    capabilities: int
    max_packet: int
    charset: int
    username: str
    auth_response: bytes = field(repr=False)  # may be a clear-text token (mysql_clear_password)
    database: str | None = None
    auth_plugin: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


_SSL_REQUEST_LEN = 32


def _handshake_reader(payload: bytes, what: str) -> PayloadReader:
    return PayloadReader(payload, error=ClientProtocolError, what=what, code=ER_HANDSHAKE_ERROR,
                         sqlstate=SQLSTATE_CONNECTION)


def _read_attrs(r: PayloadReader) -> dict[str, str]:
    total = r.lenenc_int()
    if total > r.remaining:
        raise r.fail("connection attributes longer than the packet")
    end = r.pos + total
    attrs: dict[str, str] = {}
    while r.pos < end:
        key = r.lenenc_bytes()
        value = r.lenenc_bytes()
        if r.pos > end:
            raise r.fail("connection attribute runs past its block")
        attrs[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return attrs


def parse_client_hello(payload: bytes) -> SSLRequest | HandshakeResponse:
    """The client's answer to the greeting: an SSLRequest (32 bytes, SSL flag) or a HandshakeResponse41."""
    r = _handshake_reader(payload, "handshake response")
    caps = r.u32()
    if not caps & Cap.PROTOCOL_41:
        # HandshakeResponse320: clients from before 2004. Its 2-byte flags do not include 4.1.
        raise ClientProtocolError("the client does not speak protocol 4.1 (HandshakeResponse41)",
                                  code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)
    max_packet = r.u32()
    charset = r.u8()
    r.skip(23)  # filler (MariaDB: the last 4 are extended caps; never sent to a server that sets CLIENT_MYSQL)
    if r.at_end:
        if len(payload) == _SSL_REQUEST_LEN and caps & Cap.SSL:
            return SSLRequest(caps, max_packet, charset)
        raise r.fail("truncated")
    username = r.text(r.cstring(), "user name")
    if caps & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = r.lenenc_bytes()
    elif caps & Cap.SECURE_CONNECTION:
        auth = r.take(r.u8())
    else:
        auth = r.cstring()
    database = None
    if caps & Cap.CONNECT_WITH_DB and not r.at_end:
        database = r.text(r.cstring(allow_eof=True), "database name")
    plugin = None
    if caps & Cap.PLUGIN_AUTH and not r.at_end:
        plugin = r.cstring(allow_eof=True).decode("ascii", "replace")
    attrs: dict[str, str] = {}
    if caps & Cap.CONNECT_ATTRS and not r.at_end:
        attrs = _read_attrs(r)
    # Trailing bytes (e.g. a zstd level) are ignored: COMPRESS is refused by the caller anyway.
    return HandshakeResponse(caps, max_packet, charset, username, auth, database or None, plugin, attrs)


def build_ssl_request(*, capabilities: int, charset: int = DEFAULT_CHARSET,
                      max_packet: int = DEFAULT_MAX_PACKET) -> bytes:
    return (capabilities | Cap.SSL).to_bytes(4, "little") + max_packet.to_bytes(4, "little") + bytes(
        (charset & 0xFF,)) + b"\0" * 23


def _encode_attrs(attrs: dict[str, str]) -> bytes:
    block = b"".join(lenenc_bytes(k.encode("utf-8")) + lenenc_bytes(v.encode("utf-8")) for k, v in attrs.items())
    return lenenc_bytes(block)


def build_handshake_response(*, capabilities: int, username: str, auth_response: bytes,
                             database: str | None = None, auth_plugin: str | None = None,
                             attrs: dict[str, str] | None = None, charset: int = DEFAULT_CHARSET,
                             max_packet: int = DEFAULT_MAX_PACKET) -> bytes:
    """The gateway's HandshakeResponse41 to the upstream. ``capabilities`` decides which fields go in."""
    caps = capabilities
    if database:
        caps |= Cap.CONNECT_WITH_DB
    else:
        caps &= ~Cap.CONNECT_WITH_DB
    if attrs is None:
        caps &= ~Cap.CONNECT_ATTRS
    out = bytearray()
    out += (caps & 0xFFFFFFFF).to_bytes(4, "little")
    out += max_packet.to_bytes(4, "little")
    out += bytes((charset & 0xFF,))
    out += b"\0" * 23
    out += username.encode("utf-8") + b"\0"
    if caps & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out += lenenc_bytes(auth_response)
    elif caps & Cap.SECURE_CONNECTION:
        if len(auth_response) > 255:
            raise ValueError("auth response too long without PLUGIN_AUTH_LENENC_CLIENT_DATA")
        out += bytes((len(auth_response),)) + auth_response
    else:
        out += auth_response + b"\0"
    if caps & Cap.CONNECT_WITH_DB:
        out += database.encode("utf-8") + b"\0"
    if caps & Cap.PLUGIN_AUTH:
        out += (auth_plugin or "").encode("ascii") + b"\0"
    if caps & Cap.CONNECT_ATTRS:
        out += _encode_attrs(attrs or {})
    return bytes(out)


# ---- auth exchange -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthSwitch:
    plugin: str
    data: bytes  # the new nonce (with its trailing NUL stripped for the plugins we speak)


@dataclass(frozen=True)
class AuthMoreData:
    data: bytes = field(repr=False)


def build_auth_switch(plugin: str, data: bytes) -> bytes:
    return bytes((EOF_HEADER,)) + plugin.encode("ascii") + b"\0" + data


def build_clear_password_switch(scramble: bytes) -> bytes:
    """Ask the client for its password in clear: for the gateway, that is the session token."""
    return build_auth_switch(CLEAR_PASSWORD, scramble + b"\0")


def parse_clear_password(payload: bytes) -> str:
    """The session token from a mysql_clear_password reply (``token\\0``). Never echoed in errors."""
    data = payload[:-1] if payload.endswith(b"\0") else payload
    if len(data) > MAX_TOKEN_LENGTH:
        raise ClientProtocolError("the password (session token) is too long", code=ER_HANDSHAKE_ERROR)
    if b"\0" in data:
        raise ClientProtocolError("malformed password packet", code=ER_HANDSHAKE_ERROR)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientProtocolError("the password (session token) is not valid UTF-8",
                                  code=ER_HANDSHAKE_ERROR) from None


def parse_auth_reply(payload: bytes) -> OkPacket | ErrPacket | AuthSwitch | AuthMoreData:
    """A server packet during upstream auth."""
    if not payload:
        raise ServerProtocolError("upstream sent an empty packet during authentication")
    head = payload[0]
    if head == OK_HEADER:
        return parse_ok(payload, error=ServerProtocolError)
    if head == ERR_HEADER:
        return parse_err(payload, error=ServerProtocolError)
    if head == EOF_HEADER:
        if len(payload) == 1:
            raise ServerProtocolError("upstream asks for the pre-4.1 password hash, which the gateway refuses",
                                      code=ER_NOT_SUPPORTED_AUTH_MODE, sqlstate=SQLSTATE_REJECTED)
        r = PayloadReader(payload, error=ServerProtocolError, what="auth switch request", pos=1)
        plugin = r.cstring(allow_eof=True).decode("ascii", "replace")
        data = r.rest()
        if data.endswith(b"\0"):
            data = data[:-1]
        return AuthSwitch(plugin, data)
    if head == AUTH_MORE_DATA_HEADER:
        return AuthMoreData(payload[1:])
    raise ServerProtocolError(f"upstream sent an unexpected packet (0x{head:02x}) during authentication")


# ---- OK / ERR / EOF ----------------------------------------------------------------------------


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


# ---- COM_CHANGE_USER ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeUser:
    username: str
    auth_response: bytes = field(repr=False)
    database: str | None = None
    charset: int | None = None
    auth_plugin: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


def parse_change_user(payload: bytes, capabilities: int) -> ChangeUser:
    """COM_CHANGE_USER (0x11): a new login on this connection, answered by the gateway itself."""
    r = _handshake_reader(payload, "COM_CHANGE_USER")
    r.skip(1)
    username = r.text(r.cstring(), "user name")
    if capabilities & Cap.SECURE_CONNECTION:
        auth = r.take(r.u8())
    else:
        auth = r.cstring()
    database = r.text(r.cstring(allow_eof=True), "database name") if not r.at_end else None
    charset = plugin = None
    attrs: dict[str, str] = {}
    if r.remaining >= 2:
        charset = r.u16()
        if capabilities & Cap.PLUGIN_AUTH and not r.at_end:
            plugin = r.cstring(allow_eof=True).decode("ascii", "replace")
        if capabilities & Cap.CONNECT_ATTRS and not r.at_end:
            attrs = _read_attrs(r)
    return ChangeUser(username, auth, database or None, charset, plugin, attrs)
