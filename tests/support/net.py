"""This machine's network facts, for tests that need a listener off loopback."""

from __future__ import annotations

import socket


def non_loopback_address() -> str | None:
    """This machine's outgoing IPv4 address, or None when it has only loopback."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address
