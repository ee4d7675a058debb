"""Who listens on a loopback port: checked before credentials go to a gateway on this machine.

On loopback there is no TLS to tell the gateway from an impostor. A Jupyter server that starts the
gateway itself (``c.SdmExtension.manage_gateway``) uses fixed ports, and another local user who
binds one first (before the gateway starts, or while it restarts) would receive the kernels' API
key and session tokens (review). So such a server exports its own uid as ``SDM_GATEWAY_UID``, and
clients send credentials to a loopback port only if the socket listening there belongs to that
uid (Linux: ``/proc/net/tcp`` and ``tcp6`` list each socket's owner). Elsewhere, or without the
variable, nothing is checked.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from .errors import GatewayError
from .net import is_loopback

PROC_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
LISTEN = "0A"


def listener_uids(port: int) -> set[int] | None:
    """The uids owning a socket that listens on ``port`` and takes loopback connections (bound to
    a loopback or the wildcard address); None where the tables cannot be read."""
    return _listeners(port, 7)


def listener_inodes(port: int) -> set[int] | None:
    """The socket inodes of those listeners (to match against a process's open files)."""
    return _listeners(port, 9)


def socket_inodes_of(pid: int) -> set[int] | None:
    """The inodes of the sockets process ``pid`` holds open; None where /proc cannot tell."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    found: set[int] = set()
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target.endswith("]") and target[8:-1].isdigit():
            found.add(int(target[8:-1]))
    return found


def descendants(pid: int, limit: int = 256) -> list[int]:
    """``pid`` and the processes below it (a wrapper such as ``uv run`` or a shell script runs the
    gateway as its child), from /proc's parent links; just ``[pid]`` where /proc cannot tell."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo and len(found) < limit:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def _listeners(port: int, column: int) -> set[int] | None:
    found: set[int] = set()
    readable = False
    for table in PROC_TABLES:
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except (OSError, UnicodeDecodeError):
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            address, _, hex_port = fields[1].rpartition(":")
            try:
                if int(hex_port, 16) != port:
                    continue
                ip = _address(address)
                if ip.is_loopback or ip.is_unspecified:
                    found.add(int(fields[column]))
            except ValueError:
                continue
    return found if readable else None


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The kernel prints each 32-bit word of the address in host byte order (little-endian here)."""
    raw = bytes.fromhex(hex_address)
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
    return ipaddress.ip_address(b"".join(words))


def check_listener(host: str, port: int, env: Mapping[str, str] | None = None, *,
                   default_owner: int | None = None) -> None:
    """Raise GatewayError if ``SDM_GATEWAY_UID`` (else ``default_owner``, given for an address
    nobody configured: the default one) is set and another uid listens on ``host:port``."""
    expected = (os.environ if env is None else env).get("SDM_GATEWAY_UID", "").strip()
    if not expected and default_owner is not None:
        expected = str(default_owner)
    if not expected or host.startswith("/") or not is_loopback(host):
        return
    if not expected.isdigit():
        raise GatewayError(f"SDM_GATEWAY_UID must be a user id (a number), not {expected[:20]!r}")
    uids = listener_uids(port)
    if not uids:  # not Linux, or nothing listens: the connection itself will tell
        return
    if uids != {int(expected)}:
        raise GatewayError(
            f"the process listening on {host}:{port} is not the gateway this Jupyter server started "
            "(it belongs to another user): no credentials were sent to it. Stop it, or have the "
            "server's gateway listen elsewhere (c.SdmExtension.gateway_api_listen / "
            "gateway_postgres_listen)")
