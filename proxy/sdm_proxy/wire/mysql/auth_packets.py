"""The auth plugin names and the packets of the auth round trips that follow the handshake. Pure.

Front side (the gateway is the server): the AuthSwitchRequest to ``mysql_clear_password`` and the
session token the client sends back in clear. Upstream side (the gateway is the client): the
server's answers while the gateway logs in (OK, ERR, AuthSwitchRequest, AuthMoreData), which
``auth_exchange`` turns into the next reply. Apart from ``handshake`` because these come after the
greeting and its response, once per plugin round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import (
    ER_HANDSHAKE_ERROR,
    ER_NOT_SUPPORTED_AUTH_MODE,
    SQLSTATE_REJECTED,
    ClientProtocolError,
    ServerProtocolError,
)
from .ok_err_eof import (
    EOF_HEADER,
    ERR_HEADER,
    OK_HEADER,
    ErrPacket,
    OkPacket,
    parse_err,
    parse_ok,
)
from .packets import PayloadReader

NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
SHA256_PASSWORD = "sha256_password"
CLEAR_PASSWORD = "mysql_clear_password"

AUTH_MORE_DATA_HEADER = 0x01
MAX_TOKEN_LENGTH = 4096


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
