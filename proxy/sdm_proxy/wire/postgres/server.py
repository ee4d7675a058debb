"""The PostgreSQL listener: accept connections and run one ``Session`` each.

    listener = await start_postgres_listener("127.0.0.1", 6432, unlock_client=..., audit_log=...)
    ...
    await listener.drain(timeout=30)   # SIGTERM: stop accepting, let sessions finish, then close them

A listener on anything but loopback must have a TLS context (the session token travels as a
cleartext password), and then every client must use TLS. One connection's failure never reaches
the listener: each session catches everything and ends only itself.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

from ... import errors as sdm_errors
from ...unlock.client import UnlockClient
from ..audit_writer import AuditWriter
from ..net import PolicyCheck, is_loopback
from . import framing
from .cancel import CancelRegistry
from .errors import ADMIN_SHUTDOWN
from .scram import ScramKeyCache
from .session import QUERY_TEXT_LIMIT, Session
from .upstream import CONNECT_TIMEOUT, STREAM_LIMIT, RouteHints

log = logging.getLogger("sdm.wire.postgres")

DEFAULT_POLICY_INTERVAL = 2.0
DEFAULT_AUTH_TIMEOUT = 60.0  # PostgreSQL's authentication_timeout
DEFAULT_MAX_STATEMENT = QUERY_TEXT_LIMIT  # the audit keeps this much text: no more may run
DEFAULT_MAX_CONNECTIONS = 1000


@dataclass
class ListenerContext:
    """What every session of one listener shares."""

    unlock_client: UnlockClient
    audit: AuditWriter
    proxy_id: str | None
    tls_context: ssl.SSLContext | None
    require_tls: bool
    policy_check: PolicyCheck | None
    policy_interval: float = DEFAULT_POLICY_INTERVAL
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    max_statement_bytes: int = DEFAULT_MAX_STATEMENT
    owns_audit: bool = True  # False when the caller shares its AuditWriter (it closes it, not us)
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    scram_cache: ScramKeyCache = field(default_factory=ScramKeyCache)
    route_hints: RouteHints = field(default_factory=RouteHints)


class PostgresListener:
    def __init__(self, ctx: ListenerContext, max_connections: int = DEFAULT_MAX_CONNECTIONS):
        self.ctx = ctx
        self.max_connections = max_connections
        self.sessions: set[Session] = set()
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> PostgresListener:
        self._server = await asyncio.start_server(self._accept, host, port, limit=STREAM_LIMIT,
                                                  reuse_address=True)
        return self

    @property
    def sockets(self):
        return self._server.sockets if self._server else ()

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1]

    @property
    def host(self) -> str:
        return self.sockets[0].getsockname()[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if len(self.sessions) >= self.max_connections:
                writer.write(framing.error_response("53300", "sorry, too many clients already", severity="FATAL"))
                writer.close()
                return
            session = Session(self.ctx, reader, writer)
            self.sessions.add(session)
            try:
                await session.run()
            finally:
                self.sessions.discard(session)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("postgres connection handler failed")
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
        finally:
            self._tasks.discard(task)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop accepting, give live sessions ``timeout`` seconds to end, then close the rest."""
        self.stop_accepting()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self.close()

    async def close(self) -> None:
        """Stop accepting and end every session now (FATAL 57P01 to clients in the relay)."""
        self.stop_accepting()
        for session in list(self.sessions):
            session.request_close(ADMIN_SHUTDOWN, "terminating connection: the gateway is shutting down")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
        if self.ctx.owns_audit:
            await self.ctx.audit.aclose()

    async def __aenter__(self) -> PostgresListener:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def start_postgres_listener(
    host: str,
    port: int,
    *,
    unlock_client: UnlockClient,
    audit_log,
    tls_context: ssl.SSLContext | None = None,
    policy_check: PolicyCheck | None = None,
    proxy_id: str | None = None,
    policy_interval: float = DEFAULT_POLICY_INTERVAL,
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    max_statement_bytes: int = DEFAULT_MAX_STATEMENT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> PostgresListener:
    """Start serving; ``port=0`` picks a free port (see ``listener.port``).

    ``audit_log`` is an ``AuditLog`` (or an ``AuditWriter`` to share one between listeners).
    ``policy_check(cred)`` is awaited every ``policy_interval`` seconds per connection: None keeps
    it, a string closes it with that reason. Raises ``UsageError`` for a non-loopback address
    without ``tls_context``.
    """
    loopback = is_loopback(host)
    if not loopback and tls_context is None:
        raise sdm_errors.UsageError(
            f"refusing to listen on {host}:{port} without TLS: the session token would cross the network "
            "in clear (give the gateway certificate, or listen on 127.0.0.1)")
    shared = isinstance(audit_log, AuditWriter)
    writer = audit_log if shared else AuditWriter(audit_log)
    if proxy_id is None:
        proxy_id = getattr(getattr(unlock_client, "identity", None), "proxy_id", None)
    ctx = ListenerContext(
        unlock_client=unlock_client, audit=writer, proxy_id=proxy_id, tls_context=tls_context,
        require_tls=not loopback, policy_check=policy_check, policy_interval=policy_interval,
        auth_timeout=auth_timeout, connect_timeout=connect_timeout, max_statement_bytes=max_statement_bytes,
        owns_audit=not shared)
    return await PostgresListener(ctx, max_connections).start(host, port)
