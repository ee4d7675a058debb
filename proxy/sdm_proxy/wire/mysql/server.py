"""The MySQL listener: accept connections and run one ``Session`` each.

    listener = await start_mysql_listener("127.0.0.1", 13306, unlock_client=..., audit_log=...)
    ...
    await listener.drain(timeout=30)   # SIGTERM: stop accepting, idle clients get ERR 1053 now,
                                       # busy ones after their command; then close the rest

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
from ..login_throttle import DEFAULT_LIMIT, LoginThrottle
from ..net import PolicyCheck, is_loopback, peer_text
from .channel import ClientChannel
from .errors import ER_CON_COUNT_ERROR, SQLSTATE_REJECTED, ServerShutdown, err_fields
from .handshake import DEFAULT_SERVER_VERSION
from .ok_err_eof import build_err
from .packets import MAX_COMMAND_PACKET, frame
from .registry import ConnectionRegistry
from .session import Session
from .session_audit import PROTOCOL
from .upstream import CONNECT_TIMEOUT

log = logging.getLogger("sdm.wire.mysql")

DEFAULT_POLICY_INTERVAL = 2.0
DEFAULT_AUTH_TIMEOUT = 30.0  # mysqld's connect_timeout is 10 s; token prompts need a little more
DEFAULT_MAX_CONNECTIONS = 1000
SHUTDOWN_MESSAGE = "Server shutdown in progress: the gateway is shutting down"


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
    max_command_packet: int = MAX_COMMAND_PACKET
    server_version: str = DEFAULT_SERVER_VERSION
    registry: ConnectionRegistry = field(default_factory=ConnectionRegistry)
    throttle: LoginThrottle | None = None  # failed logins per address (login_throttle.py); None: off


class MysqlListener(Listener):
    def __init__(self, ctx: ListenerContext, max_connections: int = DEFAULT_MAX_CONNECTIONS, *,
                 owns_audit: bool = False, logins_per_address: int = DEFAULT_LOGINS_PER_ADDRESS):
        super().__init__(max_connections, ctx.audit, owns_audit, logins_per_address)
        self.ctx = ctx
        self.throttle = ctx.throttle
        self._closing = False

    async def start(self, host: str, port: int) -> MysqlListener:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._channel, host, port, reuse_address=True)
        return self

    def _channel(self) -> ClientChannel:
        channel = ClientChannel()
        channel.on_made = self._spawn
        return channel

    def _spawn(self, channel: ClientChannel) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, channel: ClientChannel) -> None:
        try:
            slot = None
            if not (len(self.sessions) >= self.max_connections or self._closing):
                slot = self.logins.take(peer_text(channel.peer))
            if slot is None:
                # Instead of a greeting, as mysqld does when max_connections is reached.
                if self._closing:
                    code, sqlstate, message = err_fields(ServerShutdown(SHUTDOWN_MESSAGE))
                elif len(self.sessions) >= self.max_connections:
                    code, sqlstate, message = ER_CON_COUNT_ERROR, SQLSTATE_REJECTED, "Too many connections"
                else:
                    code, sqlstate, message = (ER_CON_COUNT_ERROR, SQLSTATE_REJECTED,
                                               "Too many connections from this address are still logging in")
                channel.write(frame(build_err(code, sqlstate, message), 0))
                channel.close()
                return
            session = None
            try:
                session = Session(self.ctx, channel)
                session.login_slot = slot
                self.sessions.add(session)
                await session.run()
            finally:
                slot.release()
                self.sessions.discard(session)
        except asyncio.CancelledError:
            channel.abort()
        except Exception:
            log.exception("mysql connection handler failed")
            channel.abort()

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop accepting; idle sessions end now (ERR 1053), busy ones after their current command
        (at most ``timeout`` seconds); then close whatever is left."""
        self.stop_accepting()
        self._closing = True
        for session in list(self.sessions):
            session.request_close(ServerShutdown(SHUTDOWN_MESSAGE))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self.close()

    async def close(self) -> None:
        """Stop accepting and end every session now."""
        self.stop_accepting()
        self._closing = True
        for session in list(self.sessions):
            session.request_close(ServerShutdown(SHUTDOWN_MESSAGE), force=True)
        await self._wind_down()


async def start_mysql_listener(
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
    max_command_packet: int = MAX_COMMAND_PACKET,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    server_version: str = DEFAULT_SERVER_VERSION,
    login_failure_limit: int = DEFAULT_LIMIT,
    logins_per_address: int = DEFAULT_LOGINS_PER_ADDRESS,
) -> MysqlListener:
    """Start serving; ``port=0`` picks a free port (see ``listener.port``).

    ``audit_log`` is an ``AuditLog`` (or an ``AuditWriter`` to share one between listeners; a shared
    writer is left open by ``close``). ``policy_check(cred)`` is awaited every ``policy_interval``
    seconds per connection: None keeps it, a string closes it with that reason. Raises
    ``UsageError`` for a non-loopback address without ``tls_context``; off loopback, clients must
    use TLS. ``login_failure_limit``: failed logins per client address and minute before its logins
    without a valid token are refused for a minute (login_throttle.py); 0 turns that off.
    ``logins_per_address``: connections from one client address (not loopback) still logging in at
    once, past which its next connections are refused (login_slots.py).
    """
    setup = listener_setup(host, port, tls_context=tls_context, audit_log=audit_log,
                           unlock_client=unlock_client, proxy_id=proxy_id)
    ctx = ListenerContext(
        unlock_client=unlock_client, audit=setup.audit, proxy_id=setup.proxy_id, tls_context=tls_context,
        require_tls=setup.require_tls, policy_check=policy_check, policy_interval=policy_interval,
        auth_timeout=auth_timeout, connect_timeout=connect_timeout, max_command_packet=max_command_packet,
        server_version=server_version)
    if login_failure_limit > 0:
        ctx.throttle = LoginThrottle(setup.audit.post, protocol=PROTOCOL, proxy_id=setup.proxy_id,
                                     limit=login_failure_limit)
    return await MysqlListener(ctx, max_connections, owns_audit=setup.owns_audit,
                               logins_per_address=logins_per_address).start(host, port)


__all__ = ["ListenerContext", "MysqlListener", "is_loopback", "start_mysql_listener"]
