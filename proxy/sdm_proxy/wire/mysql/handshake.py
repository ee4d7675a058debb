"""The login packets: HandshakeV10, SSLRequest, HandshakeResponse41 and COM_CHANGE_USER. Pure.

Front side (the gateway is the server): its own HandshakeV10, the client's SSLRequest and
HandshakeResponse41, and COM_CHANGE_USER (a second login on the same connection, read with the same
helpers). Upstream side (the gateway is the client): the server's HandshakeV10 and the gateway's own
SSLRequest / HandshakeResponse41. The auth round trips that follow are in ``auth_packets``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .auth_packets import NATIVE_PASSWORD
from .errors import (
    ER_HANDSHAKE_ERROR,
    ER_NOT_SUPPORTED_AUTH_MODE,
    SQLSTATE_CONNECTION,
    SQLSTATE_REJECTED,
    ClientProtocolError,
    ServerProtocolError,
    UpstreamLoginError,
)
from .flags import Cap, Status
from .ok_err_eof import ERR_HEADER, parse_err
from .packets import PayloadReader, lenenc_bytes

DEFAULT_SERVER_VERSION = "8.0.0-sdm-gateway"
DEFAULT_CHARSET = 45  # utf8mb4_general_ci: known to MySQL 5.5+ and every MariaDB
DEFAULT_MAX_PACKET = 1 << 24
SCRAMBLE_LEN = 20


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
