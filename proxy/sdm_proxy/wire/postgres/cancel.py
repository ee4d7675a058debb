"""The gateway's own cancel keys: BackendKeyData handed to clients, mapped to upstream backends.

Clients never see the upstream's (pid, secret): a cancel key would let anyone who learns it cancel
queries on the real server, bypassing the gateway. The gateway issues its own random key per
connection and keeps the map here; a CancelRequest is honoured only for a live key with the right
secret (compared in constant time).
"""

from __future__ import annotations

import hmac
import secrets
import struct

from .upstream import CancelTarget

_PID_MAX = 2**31 - 1


class CancelRegistry:
    def __init__(self):
        self._targets: dict[int, tuple[bytes, CancelTarget]] = {}

    def register(self, target: CancelTarget) -> tuple[int, int]:
        """A fresh (pid, secret) for the client, mapped to ``target``."""
        while True:
            pid = secrets.randbelow(_PID_MAX - 1) + 1  # never 0; PostgreSQL pids are positive
            if pid not in self._targets:
                break
        secret = struct.unpack("!i", secrets.token_bytes(4))[0]
        self._targets[pid] = (struct.pack("!i", secret), target)
        return pid, secret

    def unregister(self, pid: int) -> None:
        self._targets.pop(pid, None)

    def lookup(self, pid: int, secret: int) -> CancelTarget | None:
        entry = self._targets.get(pid)
        if entry is None:
            return None
        expected, target = entry
        if not hmac.compare_digest(expected, struct.pack("!i", secret)):
            return None
        return target

    def __len__(self) -> int:
        return len(self._targets)
