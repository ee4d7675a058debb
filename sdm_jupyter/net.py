"""Whether a host is this machine: off it, session tokens and API keys travel over verified TLS only."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host in ("localhost", "") or host.startswith("/"):  # "" and paths: a Unix socket
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
