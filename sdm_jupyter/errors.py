"""Errors of the notebook side: each one is a single line that names the fix.

They never carry a token, an API key or a database secret. The magic turns them into IPython
``UsageError`` (one line, no traceback); the server extension into problem JSON
``{"error": <code>, "message": <one line>}``.
"""

from __future__ import annotations


class SdmClientError(Exception):
    """Base class. ``code`` is a stable machine word, ``http_status`` what a REST handler answers."""

    code = "error"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # always one line

    def __str__(self) -> str:
        return self.message


class NotConfigured(SdmClientError):
    code, http_status = "not_configured", 503


class GatewayUnreachable(SdmClientError):
    code, http_status = "gateway_unreachable", 502


class AuthenticationError(SdmClientError):
    code, http_status = "unauthenticated", 401


class PermissionDenied(SdmClientError):
    code, http_status = "forbidden", 403


class NotFound(SdmClientError):
    code, http_status = "not_found", 404


class InvalidRequest(SdmClientError):
    code, http_status = "invalid", 400


class GatewayError(SdmClientError):
    code, http_status = "gateway_error", 502


class DatabaseError(SdmClientError):
    """The database (through the gateway) refused or failed a statement."""

    code, http_status = "database_error", 502


class QueryCancelled(SdmClientError):
    code, http_status = "cancelled", 499
