"""Errors as types.

Every error the gateway raises on purpose is an ``SdmError``. Each kind carries the HTTP status and
CLI exit code it maps to, so the API, the CLI and (later) the wire listeners can all answer with the
right native error without a chain of ``isinstance`` checks. Messages are written for the person who
reads them and must never contain a secret.
"""

from __future__ import annotations


class SdmError(Exception):
    """Base of every deliberate gateway error."""

    http_status = 400
    exit_code = 1
    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:  # keep reprs short and free of payloads
        return f"{type(self).__name__}({self.message!r})"


class UsageError(SdmError):
    """The caller's input is malformed (bad duration, bad flag combination, bad name)."""

    http_status = 422
    exit_code = 2
    code = "invalid"


class NotFound(SdmError):
    http_status = 404
    code = "not_found"


class Conflict(SdmError):
    """The thing already exists, or the change would break a constraint."""

    http_status = 409
    code = "conflict"


class AuthenticationFailed(SdmError):
    """Wrong, forged, expired or revoked token or API key."""

    http_status = 401
    code = "unauthenticated"


class AccessDenied(SdmError):
    """The caller is known but is not allowed to do this (no lease, expired grant, not an admin)."""

    http_status = 403
    code = "denied"


class ProxyRejected(AccessDenied):
    """A dual-key unlock request failed the proxy half (signature, enrollment, replay, clock)."""

    code = "proxy_rejected"


class AuditUnavailable(SdmError):
    """The audit log could not be written; the action is refused (fail closed)."""

    http_status = 503
    code = "audit_unavailable"


class VaultError(SdmError):
    """A secret could not be sealed or opened (missing master key, wrong context, KMS refused)."""

    http_status = 500
    code = "vault_error"


class StateError(SdmError):
    """$SDM_HOME or the state database is missing, corrupt or at the wrong schema version."""

    http_status = 500
    code = "state_error"


class UpstreamError(SdmError):
    """A datasource could not be reached or refused the gateway's login."""

    http_status = 502
    code = "upstream_error"


class ListenError(SdmError):
    """The gateway could not listen on an address it was given (in use, not local, no permission)."""

    http_status = 500
    code = "listen_error"
