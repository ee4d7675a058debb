"""Client addresses as the gateway counts them: loopback or not, and which bucket a peer falls in.

Shared by the wire listeners (failed logins, logins in flight) and the control API (unsigned
unlock requests), so every per-address limit groups peers the same way.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Only loopback listeners may accept a session token without TLS."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host(peer: str) -> str:
    """``host`` of a session's peer ``host:port`` or ``[v6]:port`` (anything else as it is)."""
    if peer.startswith("["):
        return peer[1:].partition("]")[0]
    if peer.count(":") == 1:
        return peer.rpartition(":")[0]
    return peer


def address_key(peer: str | None) -> str | None:
    """What failures count against: the peer's address (``host:port`` as sessions keep it), an IPv6
    one by its /64; None for loopback or no address."""
    if not peer:
        return None
    addr = _host(peer)
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None if is_loopback(addr) else addr
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
