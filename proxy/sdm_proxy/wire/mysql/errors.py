"""Errors as types for the MySQL wire layer, each with the ERR packet it answers with.

``ClientProtocolError``: the client misbehaved. ``ServerProtocolError``: the upstream misbehaved.
Every error carries a MySQL error code and SQLSTATE, so the glue turns any of them into an ERR
packet without a chain of ``isinstance`` checks (``err_fields``). Messages never carry a secret,
a token or raw packet bytes.
"""

from __future__ import annotations

from ... import errors as sdm_errors

# Error codes the gateway itself sends (names as in MySQL's mysqld_error.h / errmsg.h).
ER_CON_COUNT_ERROR = 1040  # 08004 too many connections
ER_HANDSHAKE_ERROR = 1043  # 08S01 bad handshake
ER_ACCESS_DENIED_ERROR = 1045  # 28000
ER_UNKNOWN_COM_ERROR = 1047  # 08S01
ER_BAD_DB_ERROR = 1049  # 42000 unknown database (here: unknown datasource)
ER_SERVER_SHUTDOWN = 1053  # 08S01
ER_NO_SUCH_THREAD = 1094  # HY000
ER_KILL_DENIED_ERROR = 1095  # HY000
ER_UNKNOWN_ERROR = 1105  # HY000
ER_HOST_IS_BLOCKED = 1129  # HY000 "Host is blocked because of many connection errors"
ER_NET_PACKET_TOO_LARGE = 1153  # 08S01
ER_NET_READ_ERROR = 1158  # 08S01 "Got an error reading communication packets"
ER_NET_PACKETS_OUT_OF_ORDER = 1156  # 08S01
ER_NOT_SUPPORTED_YET = 1235  # 42000
ER_UNKNOWN_STMT_HANDLER = 1243  # HY000
ER_NOT_SUPPORTED_AUTH_MODE = 1251  # 08004
ER_QUERY_INTERRUPTED = 1317  # 70100
ER_MAX_PREPARED_STMT_COUNT_REACHED = 1461  # 42000
ER_CONNECTION_KILLED = 1927  # 70100 (MariaDB) "Connection was killed"; clients treat it as a disconnect
ER_SECURE_TRANSPORT_REQUIRED = 3159  # HY000
CR_CONN_HOST_ERROR = 2003  # HY000: what MySQL Router sends when the backend is unreachable
CR_SERVER_LOST = 2013  # HY000: the database went away in the middle of a command

SQLSTATE_CONNECTION = "08S01"
SQLSTATE_REJECTED = "08004"
SQLSTATE_DENIED = "28000"
SQLSTATE_SYNTAX_OR_ACCESS = "42000"
SQLSTATE_GENERAL = "HY000"
SQLSTATE_KILLED = "70100"


class WireError(Exception):
    """Base of the MySQL wire layer's own errors: an ERR packet's code, SQLSTATE and message."""

    code = ER_NET_READ_ERROR
    sqlstate = SQLSTATE_CONNECTION

    def __init__(self, message: str, *, code: int | None = None, sqlstate: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if sqlstate is not None:
            self.sqlstate = sqlstate

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.sqlstate!r}, {self.message!r})"


class ClientProtocolError(WireError):
    """The client sent something the protocol does not allow (garbage, truncated, oversized, out of order)."""


class ServerProtocolError(WireError):
    """The upstream server sent something the protocol does not allow."""


class CommandRefused(WireError):
    """A well-formed command the gateway will not run (unknown, unsupported, not allowed).

    Not a protocol error: the connection stays usable after the ERR packet.
    """

    code = ER_UNKNOWN_COM_ERROR
    sqlstate = SQLSTATE_CONNECTION


class InsecureTransport(WireError):
    """The listener requires TLS (it is not on loopback) and the client did not start it."""

    code = ER_SECURE_TRANSPORT_REQUIRED
    sqlstate = SQLSTATE_GENERAL


class ConnectionEnded(WireError):
    """The gateway ends a logged-in connection: access revoked or expired, or the database went away."""

    code = ER_CONNECTION_KILLED
    sqlstate = SQLSTATE_KILLED


class ServerShutdown(WireError):
    """The gateway is shutting down (sent to idle connections, like mysqld's 1053)."""

    code = ER_SERVER_SHUTDOWN
    sqlstate = SQLSTATE_CONNECTION


class LoginRefused(WireError):
    """The gateway refuses a login before asking the control plane (no datasource named, wrong type)."""

    code = ER_ACCESS_DENIED_ERROR
    sqlstate = SQLSTATE_DENIED


class LoginThrottled(WireError):
    """Too many failed logins from the client's address (wire/login_throttle.py), like mysqld's
    blocked host."""

    code = ER_HOST_IS_BLOCKED
    sqlstate = SQLSTATE_GENERAL


class UpstreamLoginError(WireError):
    """The upstream refused or could not complete the gateway's login.

    When the server answered with an ERR packet, its code and SQLSTATE are passed on, so the client
    sees what the database said (prefixed so it knows it was the gateway's upstream login).
    """

    code = CR_CONN_HOST_ERROR
    sqlstate = SQLSTATE_GENERAL


def err_fields(exc: BaseException) -> tuple[int, str, str]:
    """(code, SQLSTATE, message) for the ERR packet that answers ``exc``.

    Gateway errors from the control plane (bad token, no lease, audit down, ...) map to the codes
    MySQL clients already understand; anything unexpected becomes a generic 1105 without details.
    """
    if isinstance(exc, WireError):
        return exc.code, exc.sqlstate, exc.message
    if isinstance(exc, (sdm_errors.AuthenticationFailed, sdm_errors.AccessDenied)):  # ProxyRejected too
        return ER_ACCESS_DENIED_ERROR, SQLSTATE_DENIED, exc.message
    if isinstance(exc, sdm_errors.NotFound):
        return ER_ACCESS_DENIED_ERROR, SQLSTATE_DENIED, exc.message
    if isinstance(exc, sdm_errors.AuditUnavailable):
        return ER_UNKNOWN_ERROR, SQLSTATE_GENERAL, exc.message
    if isinstance(exc, sdm_errors.UpstreamError):
        return CR_CONN_HOST_ERROR, SQLSTATE_GENERAL, exc.message
    if isinstance(exc, sdm_errors.SdmError):
        return ER_UNKNOWN_ERROR, SQLSTATE_GENERAL, exc.message
    return ER_UNKNOWN_ERROR, SQLSTATE_GENERAL, "internal gateway error"
