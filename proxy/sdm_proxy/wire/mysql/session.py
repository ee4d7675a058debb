"""One ``Session`` per client connection: the asyncio glue around the pure MySQL layers.

Life of a connection (the order is enforced by ``machine.FrontConnection``):

1. the gateway's own greeting (its connection id and scramble); SSLRequest -> TLS over a MemoryBIO
   (``tlsbio``); the client's HandshakeResponse41 names the credential (user) and the datasource
   (database); the session token is asked for with an AuthSwitchRequest to ``mysql_clear_password``;
2. unlock through the ``UnlockClient`` (dual key; the control plane audits the unlock and any
   refusal), ``session.start`` written durably, and a fresh upstream login as the credential's DB user
   (``upstream.connect_upstream``): the client's HandshakeResponse is never forwarded;
3. commands, one at a time: each is classified (``commands.classify``), audited *before* it is
   forwarded (fail closed), relayed byte for byte, and its response followed by a
   ``ResponseScanner`` for rows, errors and duration (``query.end``). QUIT, CHANGE_USER,
   RESET_CONNECTION and KILL are handled by the gateway. A watcher task re-checks the session's right
   to stay connected every few seconds;
4. closing: an ERR when there is a packet boundary to put it at, and ``session.end`` with the reason.

Each phase is a mixin of ``Session`` in a module of its own: ``session_login`` (1-2, and
COM_CHANGE_USER), ``session_commands`` (3), ``session_kill`` (KILL by gateway id),
``session_policy`` (the watcher), ``session_audit`` (the events) and ``session_close`` (4, and the
hang-up callbacks). This module holds the connection's state and its entry point.

Nothing here logs or sends a token or a password.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ...audit import events as audit
from ...unlock.client import UnlockedCredential
from ..login_slots import LoginSlot
from ..net import peer_text
from .channel import ClientChannel, ConnectionLost, UpstreamChannel
from .commands import StatementMap
from .errors import (
    ER_HANDSHAKE_ERROR,
    ER_UNKNOWN_ERROR,
    SQLSTATE_GENERAL,
    ClientProtocolError,
    CommandRefused,
    WireError,
)
from .machine import FrontConnection, LoginRequest, Phase
from .packets import Packet

from .session_audit import SessionAudit
from .session_close import ClosingPhase, _Close
from .session_commands import CommandPhase
from .session_kill import KillCommand
from .session_login import LoginPhase, _Token
from .session_policy import AccessWatch

if TYPE_CHECKING:
    from .server import ListenerContext

log = logging.getLogger("sdm.wire.mysql")


class Session(LoginPhase, CommandPhase, KillCommand, AccessWatch, SessionAudit, ClosingPhase):
    """One client connection: its state and entry point; the phases' methods come from the mixins."""

    def __init__(self, ctx: ListenerContext, client: ClientChannel):
        self.ctx = ctx
        self.client = client
        self.peer = peer_text(client.peer)
        self.connection_id = ctx.registry.register(self)
        self.front = FrontConnection(connection_id=self.connection_id, tls_available=ctx.tls_context is not None,
                                     tls_required=ctx.require_tls, server_version=ctx.server_version,
                                     max_command_packet=ctx.max_command_packet)
        self.cred: UnlockedCredential | None = None
        self._query_records = None  # (cred, QueryRecords) of session_audit, made at the first command
        self.upstream_thread: int | None = None
        self.up: UpstreamChannel | None = None
        self.statements = StatementMap()
        self.status_flags = 2  # the last server status (autocommit etc.), for answers the gateway makes
        self.commands = 0
        self._token: _Token | None = None
        self._login: LoginRequest | None = None
        self._started_event = False
        self._cmd: Packet | None = None  # the command in flight
        self._answered = False  # bytes of the in-flight command's answer already went to the client
        self._ended: tuple[str, str] | None = None  # (status, reason) once access ended (revoked, expired)
        self.login_slot: LoginSlot | None = None  # the listener's, given back once the login ends
        self._goodbye: tuple[WireError, str, str] | None = None  # close between commands: (ERR, status, reason)
        self._client_gone = False
        client.on_lost = self._on_client_lost

    # ---- entry ------------------------------------------------------------------------------

    async def run(self) -> None:
        status, error = audit.OK, None
        try:
            self._flush()  # the greeting
            try:
                async with asyncio.timeout(self.ctx.auth_timeout):
                    logged_in = await self._handshake()
            except TimeoutError:
                raise _Close(ClientProtocolError("authentication timeout: the login did not finish in time",
                                                 code=ER_HANDSHAKE_ERROR), audit_denied=True) from None
            if self.login_slot is not None:
                self.login_slot.release()
            if logged_in:
                status, error = await self._serve()
        except _Close as exc:
            status, error = exc.status, exc.reason
            if exc.audit_denied and not self._started_event:
                self._post_denied(exc.reason)
            await self._send_final(exc.error, exc.seq)
        except WireError as exc:  # a protocol error that surfaced outside the command path
            status, error = audit.ERROR, exc.message
            await self._send_final(exc, 1 if self.front.phase is Phase.COMMAND else None)
        except ConnectionLost:
            status, error = audit.ERROR, "connection lost"
        except asyncio.CancelledError:
            status, error = audit.ERROR, "gateway shutting down"
            raise
        except Exception:
            log.exception("mysql session %s failed", self.peer)
            status, error = audit.ERROR, "internal gateway error"
            await self._send_final(CommandRefused("internal gateway error (see the gateway log)",
                                                  code=ER_UNKNOWN_ERROR, sqlstate=SQLSTATE_GENERAL), None)
        finally:
            self._finish(status, error)

    def request_close(self, error: WireError, *, force: bool = False, status: str = audit.ERROR) -> None:
        """End this connection at its next packet boundary with ``error`` (gateway shutdown).

        An idle connection ends at once; one running a command first finishes it, unless ``force``.
        """
        if self._goodbye is None:
            self._goodbye = (error, status, error.message)
        self.client.interrupt()
        if force and self._cmd is not None and self.up is not None:
            self.up.close()

    @property
    def busy(self) -> bool:
        return self._cmd is not None

    # ---- shared by the phases -----------------------------------------------------------------

    def _flush(self) -> None:
        out = self.front.data_to_send()
        if out:
            self.client.write(out)

    def __repr__(self) -> str:
        return f"MysqlSession(id={self.connection_id}, peer={self.peer}, user={self.cred.user if self.cred else None})"
