"""What the PostgreSQL and MySQL listeners share: the start-up checks, the server socket, the set of
live sessions and how they are wound down. Each protocol's listener adds how it accepts a
connection and how it tells a session to end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .. import errors as sdm_errors
from .audit_writer import AuditWriter
from .login_slots import DEFAULT_PER_ADDRESS, LoginSlots
from .net import is_loopback


@dataclass(frozen=True)
class ListenerSetup:
    """Checked before a listener starts: whether clients must use TLS and which audit writer to use."""

    require_tls: bool
    audit: AuditWriter
    owns_audit: bool  # False when the caller shares its AuditWriter (it closes it, not the listener)
    proxy_id: str | None


def listener_setup(host: str, port: int, *, tls_context, audit_log, unlock_client,
                   proxy_id: str | None) -> ListenerSetup:
    """Raises ``UsageError`` for a non-loopback address without ``tls_context``; ``audit_log`` is an
    ``AuditLog`` (wrapped in a writer this listener owns) or an ``AuditWriter`` shared between
    listeners."""
    loopback = is_loopback(host)
    if not loopback and tls_context is None:
        raise sdm_errors.UsageError(
            f"refusing to listen on {host}:{port} without TLS: the session token would cross the network "
            "in clear (give the gateway certificate, or listen on 127.0.0.1)")
    owns = not isinstance(audit_log, AuditWriter)
    if proxy_id is None:
        proxy_id = getattr(getattr(unlock_client, "identity", None), "proxy_id", None)
    return ListenerSetup(require_tls=not loopback, audit=AuditWriter(audit_log) if owns else audit_log,
                         owns_audit=owns, proxy_id=proxy_id)


class Listener:
    """The server socket and the live sessions of one listener."""

    def __init__(self, max_connections: int, audit: AuditWriter, owns_audit: bool,
                 logins_per_address: int = DEFAULT_PER_ADDRESS):
        self.max_connections = max_connections
        self.logins = LoginSlots(logins_per_address)  # logins in flight per client address
        self.sessions: set = set()
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        self._audit = audit
        self._owns_audit = owns_audit
        self.throttle = None  # the listener's LoginThrottle, set by the protocol's listener

    @property
    def sockets(self):
        return self._server.sockets if self._server else ()

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1]

    @property
    def host(self) -> str:
        return self.sockets[0].getsockname()[0]

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _wind_down(self) -> None:
        """After the sessions were told to end: wait for them (then cancel the stragglers), close the
        socket, and close the audit writer if this listener owns it."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
        if self.throttle is not None:
            self.throttle.close()  # each block's count goes on record before the writer closes
        if self._owns_audit:
            await self._audit.aclose()

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
