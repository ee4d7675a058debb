"""Connections still logging in, counted per client address, so one address cannot hold them all.

A listener takes every connection up to ``max_connections``, and a connection that sends nothing
keeps its place until the login timeout (60 s) ends it. Without a bound per address, one host
could open that many connections, stay silent, and every other user would be refused for a
minute at a time. (PostgreSQL and PgBouncer have the same gap.) So a connection takes a *login
slot* of its address when it is accepted and gives it back when its login ends, whichever way it
ends: logged in, refused, timed out or gone. Past ``per_address`` slots in use, the address's
next connections are refused with the protocol's "too many connections" error (MySQL at once;
PostgreSQL after TLS and the startup packet, so that libpq shows it: postgres/server.py).

Counted as the failed-login throttle counts (addresses.py): loopback clients are not counted
(they are on the gateway's machine already), an IPv6 client counts by its /64. Logged-in sessions do not count: a pool of
many connections from one host is fine, only its logins in flight are bounded.
"""

from __future__ import annotations

import logging

from ..addresses import address_key

log = logging.getLogger("sdm.wire")

DEFAULT_PER_ADDRESS = 64  # logins in flight per client address; a connection pool opens a few at once
MAX_PER_ADDRESS = 100_000


class LoginSlot:
    """One connection's place among its address's logins in flight; ``release`` is idempotent."""

    __slots__ = ("_key", "_slots")

    def __init__(self, slots: LoginSlots | None, key: str | None):
        self._slots = slots
        self._key = key

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._give_back(self._key)


class LoginSlots:
    """The logins in flight of one listener, per client address."""

    def __init__(self, per_address: int = DEFAULT_PER_ADDRESS, *, warn: bool = True):
        if not 1 <= per_address <= MAX_PER_ADDRESS:
            raise ValueError(f"per_address must be 1..{MAX_PER_ADDRESS}, not {per_address}")
        self.per_address = per_address
        self._in_flight: dict[str, int] = {}
        self._warned: set[str] = set()  # addresses warned about since they last had no login in flight
        self._warn = warn

    def take(self, peer: str | None) -> LoginSlot | None:
        """A slot for a connection from ``peer`` (``host:port``), or None when its address has
        ``per_address`` logins in flight already."""
        key = address_key(peer)
        if key is None:
            return LoginSlot(None, None)  # loopback or no address: not counted
        count = self._in_flight.get(key, 0)
        if count >= self.per_address:
            if self._warn and key not in self._warned:  # once per episode, not once per refused connection
                self._warned.add(key)
                log.warning("refusing connections from %s: %d logins from that address are in flight",
                            key, count)
            return None
        self._in_flight[key] = count + 1
        return LoginSlot(self, key)

    def in_flight(self, peer: str | None) -> int:
        key = address_key(peer)
        return 0 if key is None else self._in_flight.get(key, 0)

    def _give_back(self, key: str) -> None:
        count = self._in_flight.get(key, 0) - 1
        if count > 0:
            self._in_flight[key] = count
        else:  # the episode ends when the address has no login in flight
            self._in_flight.pop(key, None)
            self._warned.discard(key)
