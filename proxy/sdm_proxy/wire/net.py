"""What both listeners share about their own sockets."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from ..unlock.client import UnlockedCredential

# Asked every few seconds per open connection: None keeps it, a string is the reason to close it.
PolicyCheck = Callable[[UnlockedCredential], Awaitable[str | None]]


def is_loopback(host: str) -> bool:
    """Only loopback listeners may accept a session token without TLS."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
