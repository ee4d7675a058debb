"""PostgreSQL v3 encoders: every message the gateway itself builds, to clients and to upstreams.

Separate from the decoding side (``framing_parse``, ``framing_splitter``): these are small pure
functions returning ready-to-write bytes, used by the login, the relay's refusals and the upstream
connection (where the gateway acts as a client).
"""

from __future__ import annotations

from .framing_consts import (
    _HDR,
    _I32,
    _II,
    _IIII,
    CANCEL_REQUEST_CODE,
    PROTOCOL_V3,
    SSL_REQUEST_CODE,
)

# ---- encoders: what the gateway sends to clients ------------------------------------------------------


def _msg(t: str, body: bytes = b"") -> bytes:
    return _HDR.pack(ord(t), len(body) + 4) + body


def _cstr(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    return raw.replace(b"\0", b"?") + b"\0"


def authentication_ok() -> bytes:
    return _msg("R", _I32.pack(0))


def authentication_cleartext_password() -> bytes:
    return _msg("R", _I32.pack(3))


def parameter_status(name: str, value: str) -> bytes:
    return _msg("S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg("K", _II.pack(pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return _msg("Z", status)


def negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    body = _II.pack(newest_minor, len(unsupported)) + b"".join(_cstr(o) for o in unsupported)
    return _msg("v", body)


def _fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    return body + b"\0"


def error_response(sqlstate: str, message: str, *, severity: str = "ERROR", detail: str | None = None,
                   hint: str | None = None) -> bytes:
    return _msg("E", _fields(severity, sqlstate, message, detail, hint))


def notice_response(message: str, *, sqlstate: str = "00000", severity: str = "NOTICE") -> bytes:
    return _msg("N", _fields(severity, sqlstate, message, None, None))


# ---- encoders: what the gateway sends upstream (as a client) ----------------------------------------


def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_V3) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _II.pack(8, SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    return _IIII.pack(16, CANCEL_REQUEST_CODE, pid, secret)


def password_message(data: bytes) -> bytes:
    return _msg("p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return _msg("p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def terminate() -> bytes:
    return _msg("X")


def flush() -> bytes:
    return _msg("H")


FLUSH = flush()
TERMINATE = terminate()
