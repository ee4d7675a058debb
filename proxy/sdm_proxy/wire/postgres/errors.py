"""Errors as types for the PostgreSQL wire layer, and how each maps to a SQLSTATE.

``ClientProtocolError`` means the client misbehaved (bad frame, wrong order, oversized message);
``ServerProtocolError`` means the upstream server did. Both carry a SQLSTATE so the glue can answer
with a protocol-native ErrorResponse without a chain of ``isinstance`` checks. Messages never
contain a secret or a token.
"""

from __future__ import annotations

from ... import errors as sdm_errors

# SQLSTATEs the gateway itself sends.
PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"
FEATURE_NOT_SUPPORTED = "0A000"
CANNOT_CONNECT_NOW = "57P03"
ADMIN_SHUTDOWN = "57P01"
PROGRAM_LIMIT = "54000"
INTERNAL_ERROR = "XX000"
QUERY_CANCELED = "57014"


class WireError(Exception):
    """Base of the wire layer's own errors: a SQLSTATE plus a message for the client."""

    sqlstate = PROTOCOL_VIOLATION

    def __init__(self, message: str, *, sqlstate: str | None = None):
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate


class ClientProtocolError(WireError):
    """The client sent something the protocol does not allow (garbage, truncated, oversized, out of order)."""

    sqlstate = PROTOCOL_VIOLATION


class ServerProtocolError(WireError):
    """The upstream server sent something the protocol does not allow."""

    sqlstate = CONNECTION_FAILURE


class UpstreamLoginError(WireError):
    """The upstream refused or could not complete the gateway's login (08006, reason without secret)."""

    sqlstate = CONNECTION_FAILURE


def sqlstate_for(exc: BaseException) -> str:
    """The SQLSTATE a FATAL ErrorResponse should carry for a gateway error."""
    if isinstance(exc, WireError):
        return exc.sqlstate
    if isinstance(exc, sdm_errors.AuthenticationFailed):
        return INVALID_PASSWORD
    if isinstance(exc, (sdm_errors.AccessDenied, sdm_errors.NotFound)):  # ProxyRejected included
        return INVALID_AUTHORIZATION
    if isinstance(exc, sdm_errors.AuditUnavailable):
        return CANNOT_CONNECT_NOW
    if isinstance(exc, sdm_errors.UpstreamError):
        return CONNECTION_FAILURE
    return INTERNAL_ERROR
