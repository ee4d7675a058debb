"""Parsing and validation of user-supplied values: names, durations, host:port pairs.

Each function raises ``UsageError`` with a message that says what was expected.
"""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import UsageError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.@-]{0,62}$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_DURATION_PART = re.compile(r"([0-9]{1,9})([smhdw])")  # a year is 8 digits of seconds; int() of more is slow
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=365)

DATASOURCE_TYPES = ("postgres", "mysql")
TLS_MODES = ("disable", "require", "verify-full")


def check_name(kind: str, value: str) -> str:
    """Names of users, roles, datasources and credentials: a letter, then letters, digits, _ . @ -."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise UsageError(
            f"invalid {kind} name {value!r}: start with a letter; use letters, digits, _ . @ - (max 63)"
        )
    return value


def check_text(kind: str, value: str, max_length: int = 255) -> str:
    """A free-text field stored in the state (a host, a database or login name, a path): 1 to
    ``max_length`` characters of real Unicode (an API body's ``\\ud800`` or a command line's
    undecodable byte is a lone surrogate, which no database can store)."""
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise UsageError(f"invalid {kind}: give 1 to {max_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"invalid {kind}: it is not valid Unicode text") from None
    if _CONTROL.search(value):
        # No host, database, login name or path has one; stored, it would reach connection
        # strings, the audit log and terminals (escape sequences).
        raise UsageError(f"invalid {kind}: it contains a control character (a newline, tab or escape)")
    return value


def _shown(text: object) -> str:
    """A bad value as an error message quotes it: cut short, so 5,000 characters don't come back."""
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:36] + "...'"


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``: a positive duration of at most a year."""
    raw = (text or "").strip().lower()
    pos, seconds = 0, 0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not raw or pos != len(raw):
        raise UsageError(f"invalid duration {_shown(text)}: use e.g. 90s, 30m, 2h, 1d or 1h30m")
    if seconds <= 0:
        raise UsageError(f"invalid duration {_shown(text)}: must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise UsageError(f"invalid duration {_shown(text)}: at most 365d")
    return timedelta(seconds=seconds)


def parse_host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[v6]:PORT``."""
    raw = (text or "").strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise UsageError(f"invalid address {_shown(text)}: expected HOST:PORT")
    port = check_port(int(port_text))
    host = host.strip("[]") or default_host
    return host, port


def check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise UsageError(f"invalid port {port}: must be 1-65535")
    return port


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UsageError(f"invalid {kind} {value!r}: choose one of {', '.join(choices)}")
    return value
