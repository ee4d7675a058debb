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

from ...unlock.client import UnlockClient
from ..audit_writer import AuditWriter
from ..listener import Listener, listener_setup
from ..login_slots import DEFAULT_PER_ADDRESS as DEFAULT_LOGINS_PER_ADDRESS
from ..login_slots import LoginSlots
from ..login_throttle import DEFAULT_LIMIT, LoginThrottle
from ..net import PolicyCheck
from . import framing
from .cancel import CancelRegistry
from .errors import ADMIN_SHUTDOWN
from .scram import ScramKeyCache
from .session import QUERY_TEXT_LIMIT, Session
from .session_audit import PROTOCOL
from .spares import WarmSpares
from .upstream import CONNECT_TIMEOUT, STREAM_LIMIT, RouteHints

log = logging.getLogger("sdm.wire.postgres")

DEFAULT_POLICY_INTERVAL = 2.0
DEFAULT_AUTH_TIMEOUT = 60.0  # PostgreSQL's authentication_timeout
DEFAULT_MAX_STATEMENT = QUERY_TEXT_LIMIT  # the audit keeps this much text: no more may run
DEFAULT_MAX_CONNECTIONS = 1000
TOO_MANY_LOGINS = "sorry, too many connections from this address are still logging in"


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
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    scram_cache: ScramKeyCache = field(default_factory=ScramKeyCache)
    route_hints: RouteHints = field(default_factory=RouteHints)
    spares: WarmSpares | None = None  # warm logins (spares.py); None: every session logs in itself
    throttle: LoginThrottle | None = None  # failed logins per address (login_throttle.py); None: off


class PostgresListener(Listener):
    def __init__(self, ctx: ListenerContext, max_connections: int = DEFAULT_MAX_CONNECTIONS, *,
                 owns_audit: bool = False, logins_per_address: int = DEFAULT_LOGINS_PER_ADDRESS):
        super().__init__(max_connections, ctx.audit, owns_audit, logins_per_address)
        self.refusals = LoginSlots(logins_per_address, warn=False)  # connections being told "too many", per address
        self.ctx = ctx
        self.throttle = ctx.throttle

    async def start(self, host: str, port: int) -> PostgresListener:
        self._server = await asyncio.start_server(self._accept, host, port, limit=STREAM_LIMIT,
                                                  reuse_address=True)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if len(self.sessions) >= self.max_connections:
                writer.write(framing.error_response("53300", "sorry, too many clients already", severity="FATAL"))
                writer.close()
                return
            session = Session(self.ctx, reader, writer)  # nothing read yet
            slot = self.logins.take(session.peer)
            if slot is None:
                # Refused once its TLS and startup packet are in, so the client can read why; those
                # refusals are bounded per address too, and past that the answer comes at once.
                slot = self.refusals.take(session.peer)
                if slot is None:
                    writer.write(framing.error_response("53300", TOO_MANY_LOGINS, severity="FATAL"))
                    writer.close()
                    return
                session.refusal = ("53300", TOO_MANY_LOGINS)
            session.login_slot = slot
            self.sessions.add(session)
            try:
                await session.run()
            finally:
                slot.release()
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
        if self.ctx.spares is not None:
            await self.ctx.spares.aclose()
        await self._wind_down()


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
    warm_logins: bool = False,
    login_failure_limit: int = DEFAULT_LIMIT,
    logins_per_address: int = DEFAULT_LOGINS_PER_ADDRESS,
) -> PostgresListener:
    """Start serving; ``port=0`` picks a free port (see ``listener.port``).

    ``audit_log`` is an ``AuditLog`` (or an ``AuditWriter`` to share one between listeners).
    ``policy_check(cred)`` is awaited every ``policy_interval`` seconds per connection: None keeps
    it, a string closes it with that reason. Raises ``UsageError`` for a non-loopback address
    without ``tls_context``. ``warm_logins``: keep one logged-in spare per recently used route
    (spares.py) so the next connect skips the database's fork and SCRAM exchange.
    ``login_failure_limit``: failed logins per client address and minute before its logins without a
    valid token are refused for a minute (login_throttle.py); 0 turns that off.
    ``logins_per_address``: connections from one client address (not loopback) still logging in at
    once, past which its next connections are refused (login_slots.py).
    """
    setup = listener_setup(host, port, tls_context=tls_context, audit_log=audit_log,
                           unlock_client=unlock_client, proxy_id=proxy_id)
    ctx = ListenerContext(
        unlock_client=unlock_client, audit=setup.audit, proxy_id=setup.proxy_id, tls_context=tls_context,
        require_tls=setup.require_tls, policy_check=policy_check, policy_interval=policy_interval,
        auth_timeout=auth_timeout, connect_timeout=connect_timeout, max_statement_bytes=max_statement_bytes)
    if login_failure_limit > 0:
        ctx.throttle = LoginThrottle(setup.audit.post, protocol=PROTOCOL, proxy_id=setup.proxy_id,
                                     limit=login_failure_limit)
    if warm_logins:
        ctx.spares = WarmSpares(ctx.scram_cache, connect_timeout=connect_timeout)
    return await PostgresListener(ctx, max_connections, owns_audit=setup.owns_audit,
                                  logins_per_address=logins_per_address).start(host, port)
