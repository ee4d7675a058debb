"""The gateway's connection ids: what clients see in the greeting and name in ``KILL <id>``.

Clients never see the upstream thread ids as connection ids (``CONNECTION_ID()`` run on the database
still shows the upstream one): the gateway gives every front connection its own 32-bit id, unique in
this process, and maps it to the session that holds the upstream thread. Ids start at a random
offset so that two gateway instances behind one load balancer rarely hand out the same ones (a KILL
of an id served by another instance is answered with "unknown thread id").
"""

from __future__ import annotations

import secrets
import threading
from typing import Generic, TypeVar

T = TypeVar("T")

_MAX_ID = (1 << 32) - 1


class _IdSource:
    """Process-wide: every listener in this process draws from it, so ids never repeat across them."""

    def __init__(self) -> None:
        self._next = secrets.randbelow(1 << 24) + 1
        self._lock = threading.Lock()

    def take(self, in_use) -> int:
        with self._lock:
            while True:
                value = self._next
                self._next = value + 1 if value < _MAX_ID else 1
                if value not in in_use:
                    return value


_IDS = _IdSource()


class ConnectionRegistry(Generic[T]):
    """gateway connection id -> session, for one listener."""

    def __init__(self) -> None:
        self._by_id: dict[int, T] = {}

    def register(self, session: T) -> int:
        conn_id = _IDS.take(self._by_id)
        self._by_id[conn_id] = session
        return conn_id

    def unregister(self, conn_id: int) -> None:
        self._by_id.pop(conn_id, None)

    def get(self, conn_id: int) -> T | None:
        return self._by_id.get(conn_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):
        return iter(list(self._by_id.values()))
