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

Nothing here logs or sends a token or a password.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ... import errors as sdm_errors
from ...audit import events as audit
from ...unlock.client import UnlockedCredential
from ..sqlcomment import parse_tags
from .channel import ClientChannel, ConnectionLost, UpstreamChannel
from .commands import (
    ChangeUserCommand,
    Com,
    Command,
    GatewayCommand,
    ProcessKill,
    Query,
    ResponseKind,
    StatementMap,
    StmtExecute,
    StmtPrepare,
    classify,
)
from .errors import (
    CR_SERVER_LOST,
    ER_HANDSHAKE_ERROR,
    ER_KILL_DENIED_ERROR,
    ER_NO_SUCH_THREAD,
    ER_QUERY_INTERRUPTED,
    ER_UNKNOWN_ERROR,
    SQLSTATE_GENERAL,
    ClientProtocolError,
    CommandRefused,
    ConnectionEnded,
    LoginRefused,
    ServerProtocolError,
    WireError,
)
from .kill import parse_kill
from .machine import CommandReceived, FrontConnection, LoginRequest, Phase, StartTLS
from .messages import ERR_HEADER, OK_HEADER, build_ok, parse_err
from .packets import Packet, frame, frame_packets
from .responses import ResponseScanner
from .tlsbio import TLSServerSession
from .upstream import COM_QUIT, connect_upstream, run_one_statement

if TYPE_CHECKING:
    from .server import ListenerContext

log = logging.getLogger("sdm.wire.mysql")

PROTOCOL = "mysql"
QUERY_TEXT_LIMIT = 1 << 20  # audit records keep at most 1 MiB of statement text
REVOKED_LINGER = 30.0  # after access ends, the client's next command hears why (then we hang up)

# Commands that run nothing worth a record of their own (their effect is audited elsewhere:
# a prepared statement when it is executed, a cursor's rows with its execute).
_NOT_AUDITED = frozenset({Com.PING, Com.STATISTICS, Com.SET_OPTION, Com.STMT_PREPARE, Com.STMT_CLOSE,
                          Com.STMT_RESET, Com.STMT_SEND_LONG_DATA, Com.STMT_FETCH, Com.QUIT, Com.CHANGE_USER})
_CANCELLED_CODES = frozenset({ER_QUERY_INTERRUPTED, 1927, 3024})  # interrupted, killed, max_execution_time


class _Close(Exception):
    """Internal: end the connection; ``error`` (if any) becomes the last ERR the client gets."""

    def __init__(self, error: BaseException | None, *, status: str = audit.ERROR, reason: str | None = None,
                 audit_denied: bool = False, seq: int | None = None):
        reason = reason if reason is not None else _message(error)
        super().__init__(reason)
        self.error = error
        self.status = status
        self.reason = reason
        self.audit_denied = audit_denied
        self.seq = seq


class _Token:
    """The session token, kept for KILL side connections (a new unlock). Never shown."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "_Token(***)"

    __str__ = __repr__


def _message(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed"
    return getattr(exc, "message", None) or type(exc).__name__


def _peer(peer: object) -> str | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
    return str(peer) if peer else None


def _close_login(task: asyncio.Future) -> None:
    """An abandoned upstream login: close it if it finished anyway."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


class Session:
    def __init__(self, ctx: ListenerContext, client: ClientChannel):
        self.ctx = ctx
        self.client = client
        self.peer = _peer(client.peer)
        self.connection_id = ctx.registry.register(self)
        self.front = FrontConnection(connection_id=self.connection_id, tls_available=ctx.tls_context is not None,
                                     tls_required=ctx.require_tls, server_version=ctx.server_version,
                                     max_command_packet=ctx.max_command_packet)
        self.cred: UnlockedCredential | None = None
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

    # ---- handshake and login ------------------------------------------------------------------

    def _flush(self) -> None:
        out = self.front.data_to_send()
        if out:
            self.client.write(out)

    async def _handshake(self) -> bool:
        """Up to the OK after the login; False when the client leaves without logging in."""
        front = self.front
        try:
            while True:
                event = front.next_event()
                if event is None:
                    self._flush()
                    data = await self.client.read()
                    if data is None:
                        if self._goodbye is not None:
                            raise _Close(self._goodbye[0])
                        continue
                    if not data:
                        front.quit()
                        return False  # connected and left (port probe, health check, a client giving up)
                    front.receive_data(data)
                    continue
                if isinstance(event, StartTLS):
                    self.client.start_tls(TLSServerSession(self.ctx.tls_context, event.pending))
                    front.tls_established()
                    continue
                if isinstance(event, LoginRequest):
                    break
        except ClientProtocolError as exc:
            if self.client.tls is not None and not self.client.tls.handshake_done:
                raise _Close(None, reason=exc.message) from None  # no ERR in clear into a TLS handshake
            raise _Close(exc, audit_denied=True) from None
        except WireError as exc:  # InsecureTransport and the like
            raise _Close(exc, audit_denied=True) from None
        await self._log_in(event)
        front.login_succeeded(status=self.status_flags)
        self._flush()
        return True

    async def _unlock(self, req: LoginRequest, token: str) -> UnlockedCredential:
        unlock = self.ctx.unlock_client.unlock
        try:
            return await unlock(token, req.datasource, req.credential or None, protocol=PROTOCOL,
                                client_addr=self.peer)
        except sdm_errors.NotFound:
            if not req.credential:
                raise
            # `user` may name no credential (the mariadb client defaults it to the OS user): let the
            # control plane pick the caller's only lease on the datasource, or list the choices.
        return await unlock(token, req.datasource, None, protocol=PROTOCOL, client_addr=self.peer)

    async def _log_in(self, req: LoginRequest) -> None:
        """Unlock, record session.start, log in upstream. Raises _Close on any refusal."""
        self._login = req
        if not req.datasource:
            raise _Close(LoginRefused("no datasource given: set the database to the datasource name"),
                         status=audit.DENIED, audit_denied=True)
        try:
            cred = await self._unlock(req, req.token)
        except sdm_errors.SdmError as exc:
            # The control plane has already written the access.denied event for this refusal.
            raise _Close(exc, status=audit.DENIED, reason=exc.message) from None
        if cred.datasource.type != "mysql":
            message = (f"datasource {cred.datasource.name} is a {cred.datasource.type} datasource: "
                       "connect through the gateway's listener for that protocol")
            self.ctx.audit.post([audit.denied_event(
                user=cred.user, reason=message, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
                datasource=cred.datasource.name, credential=cred.credential, protocol=PROTOCOL,
                client={"addr": self.peer})])
            raise _Close(LoginRefused(message), status=audit.DENIED)
        self._token = _Token(req.token)
        self.cred = cred
        attrs = {"_client_name": "sdm-gateway", "sdm_user": cred.user,
                 "sdm_connection_id": str(self.connection_id)}
        if req.attrs.get("program_name"):
            attrs["program_name"] = req.attrs["program_name"][:256]
        # session.start and the upstream login run side by side; the client hears OK only once both
        # have succeeded, so nothing is relayed unless the session is on record.
        login = asyncio.ensure_future(connect_upstream(
            cred, capabilities=req.capabilities, charset=req.charset, attrs=attrs,
            timeout=self.ctx.connect_timeout))
        del cred  # the login task holds the secret until it is done
        try:
            await self.ctx.audit.write([self._session_event("start")])
        except BaseException as exc:
            login.cancel()
            login.add_done_callback(_close_login)
            if isinstance(exc, sdm_errors.AuditUnavailable):
                raise _Close(exc) from None
            raise
        self._started_event = True
        try:
            up = await login
        except WireError as exc:
            raise _Close(exc) from None
        self.up = UpstreamChannel(self.client)
        self.up.attach(up.reader, up.writer)
        self.up.on_idle_close = self._on_upstream_gone
        self.upstream_thread = up.thread_id
        self.status_flags = up.status

    # ---- commands ---------------------------------------------------------------------------------

    async def _serve(self) -> tuple[str, str | None]:
        watch = asyncio.create_task(self._watch(), name=f"mysql-watch-{self.connection_id}")
        try:
            return await self._commands()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _commands(self) -> tuple[str, str | None]:
        front = self.front
        while True:
            if self._goodbye is not None:
                error, status, reason = self._goodbye
                raise _Close(error, status=status, reason=reason, seq=0)
            try:
                event = front.next_event()
            except ClientProtocolError as exc:
                raise _Close(exc, seq=1) from None  # a command we could not read: answer as if to it
            if event is None:
                self._flush()
                data = await self.client.read()
                if data is None:
                    continue
                if not data:
                    return audit.OK, None  # the client hung up between commands
                try:
                    front.receive_data(data)
                except ClientProtocolError as exc:
                    raise _Close(exc, seq=1) from None
                continue
            if self._ended is not None:
                status, reason = self._ended
                raise _Close(ConnectionEnded(f"connection closed by the gateway: {reason}"),
                             status=status, reason=reason)
            if isinstance(event, LoginRequest):  # the token for a COM_CHANGE_USER
                await self._change_user(event)
                continue
            if not isinstance(event, CommandReceived):
                raise ClientProtocolError("unexpected packet")
            self._cmd, self._answered = event.packet, False
            try:
                keep = await self._command(event.packet)
            except BaseException:
                self._cmd = None  # _answered stays: it decides whether a last ERR can still be sent
                raise
            self._cmd, self._answered = None, False
            if not keep:
                return audit.OK, None

    async def _command(self, packet: Packet) -> bool:
        """One client command; False when the connection should end (COM_QUIT)."""
        front = self.front
        try:
            cmd = classify(packet.payload, capabilities=front.capabilities)
            kill = parse_kill(cmd.sql) if isinstance(cmd, (Query, StmtPrepare)) else None
            if kill is not None and isinstance(cmd, StmtPrepare):
                raise CommandRefused("KILL cannot be prepared through the gateway")
        except CommandRefused as exc:
            front.reply_error(exc, packet)
            return True
        if cmd.code == Com.QUIT:
            front.quit()
            return False
        if isinstance(cmd, ChangeUserCommand):
            front.change_user(cmd, packet)
            return True
        if isinstance(cmd, ProcessKill):
            await self._kill(packet, cmd, cmd.thread_id, False, cmd.describe())
            return True
        if kill is not None:
            await self._kill(packet, cmd, kill.thread_id, kill.query_only, cmd.sql)
            return True
        payload = packet.payload
        if isinstance(cmd, GatewayCommand):  # COM_RESET_CONNECTION: the gateway's own packet upstream
            payload = bytes((Com.RESET_CONNECTION,))
            self.statements.clear()
        event = None
        if cmd.code not in _NOT_AUDITED:
            event = self._query_event(cmd)
            if not await self._audit_or_refuse(event, packet):
                return True
        await self._relay(packet, cmd, payload, event)
        return True

    async def _audit_or_refuse(self, event: audit.Event, packet: Packet) -> bool:
        """Write the record before the statement runs; if the log is down, refuse it (fail closed)."""
        try:
            await self.ctx.audit.write([event])
        except sdm_errors.AuditUnavailable as exc:
            self.front.reply_error(CommandRefused(f"statement refused: {exc.message}", code=ER_UNKNOWN_ERROR,
                                                  sqlstate=SQLSTATE_GENERAL), packet)
            return False
        self.commands += 1
        return True

    async def _relay(self, packet: Packet, cmd: Command, payload: bytes, event: audit.Event | None) -> None:
        up = self.up
        started = time.perf_counter()
        if up is None:
            raise self._lost(ConnectionLost("no database connection"))
        scanner = None
        try:
            if cmd.response is ResponseKind.NONE:
                up.send(frame(payload, 0))
                self.statements.record(cmd, None)
                return
            scanner = ResponseScanner(cmd.response, capabilities=self.front.capabilities, seq=packet.next_seq)
            self._flush()  # anything the front queued (nothing, normally) goes before the answer
            up.expect(scanner)
            up.send(frame(payload, 0))
            await up.drain()
            await up.relay()
        except (ConnectionLost, ServerProtocolError) as exc:
            up.reset()
            if event is not None:
                self._post_outcome(event, started, scanner, failure=self._failure_reason(exc))
            raise self._lost(exc) from None
        finally:
            if scanner is not None and up.forwarded:
                self._answered = True
        self.statements.record(cmd, scanner)
        if scanner.status:
            self.status_flags = scanner.status
        if event is not None:
            self._post_outcome(event, started, scanner)

    def _failure_reason(self, exc: BaseException) -> str:
        if self._ended is not None:
            return f"connection closed by the gateway: {self._ended[1]}"
        if self._goodbye is not None:
            return self._goodbye[2]
        if self._client_gone:
            return "the client closed the connection"
        return _message(exc)

    def _lost(self, exc: BaseException) -> _Close:
        """The end of the connection when a relay broke: who broke it decides what the client hears."""
        if self._ended is not None:
            status, reason = self._ended
            return _Close(ConnectionEnded(f"connection closed by the gateway: {reason}"), status=status,
                          reason=reason)
        if self._goodbye is not None:
            error, status, reason = self._goodbye
            return _Close(error, status=status, reason=reason)
        if self._client_gone:
            return _Close(None, reason="the client closed the connection")
        if isinstance(exc, ServerProtocolError):
            return _Close(exc)
        return _Close(ConnectionEnded("lost the connection to the database", code=CR_SERVER_LOST,
                                      sqlstate=SQLSTATE_GENERAL), reason="the database closed the connection")

    # ---- KILL ---------------------------------------------------------------------------------------

    async def _kill(self, packet: Packet, cmd: Command, target_id: int, query_only: bool, text: str) -> None:
        """``KILL [QUERY] <gateway id>``: map the id to its upstream thread; only the owner may kill."""
        front, cred = self.front, self.cred
        target = self.ctx.registry.get(target_id)
        if target is None or target.cred is None or target.upstream_thread is None:
            front.reply_error(CommandRefused(f"Unknown thread id: {target_id}", code=ER_NO_SUCH_THREAD,
                                             sqlstate=SQLSTATE_GENERAL), packet)
            return
        if target.cred.user != cred.user:
            message = f"You are not owner of thread {target_id}"
            self.ctx.audit.post([audit.denied_event(
                user=cred.user, reason=message, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
                datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
                protocol=PROTOCOL, query=text[:QUERY_TEXT_LIMIT], client=self._client_fields(text))])
            front.reply_error(CommandRefused(message, code=ER_KILL_DENIED_ERROR, sqlstate=SQLSTATE_GENERAL), packet)
            return
        tcred = target.cred
        sql = f"KILL {'QUERY ' if query_only else ''}{target.upstream_thread}"
        event = self._query_event(cmd, text=text)
        event.details = {"kill": {"connection_id": target_id, "upstream_thread": target.upstream_thread,
                                  "query_only": query_only, "datasource": tcred.datasource.name,
                                  "credential": tcred.credential}}
        if not await self._audit_or_refuse(event, packet):
            return
        same_login = (tcred.datasource.name == cred.datasource.name and tcred.credential == cred.credential
                      and tcred.db_user == cred.db_user)
        if same_login:
            # The caller's own upstream login may kill its own threads: run it there.
            kill_cmd = Query(Com.QUERY, ResponseKind.RESULT, sql=sql)
            await self._relay(packet, kill_cmd, b"\x03" + sql.encode(), event)
            return
        # Another credential of the same user: a short connection as that credential (a new unlock,
        # so the dual key and the audit see it), then the OK or the database's ERR goes back.
        started = time.perf_counter()
        try:
            kcred = await self.ctx.unlock_client.unlock(self._token.value, tcred.datasource.name, tcred.credential,
                                                        protocol=PROTOCOL, client_addr=self.peer)
            answer, _ = await run_one_statement(kcred, sql, timeout=self.ctx.connect_timeout)
            del kcred
        except (sdm_errors.SdmError, WireError) as exc:
            message = getattr(exc, "message", type(exc).__name__)
            self._post_end(event, started, None, audit.ERROR, message)
            front.reply_error(CommandRefused(f"KILL failed: {message}", code=ER_UNKNOWN_ERROR,
                                             sqlstate=SQLSTATE_GENERAL), packet)
            return
        if answer[:1] == bytes((ERR_HEADER,)):
            err = parse_err(answer)
            self._post_end(event, started, None, audit.ERROR, f"({err.code}) {err.message}")
            data, _ = frame_packets(answer, packet.next_seq)
            self.client.write(data)
            return
        self._post_end(event, started, 0, audit.OK, None)
        data, _ = frame_packets(build_ok(status=self.status_flags) if answer[:1] == bytes((OK_HEADER,)) else answer,
                                packet.next_seq)
        self.client.write(data)

    # ---- COM_CHANGE_USER ------------------------------------------------------------------------------

    async def _change_user(self, req: LoginRequest) -> None:
        """A new login on this connection: the old upstream goes, a new one (maybe another user) comes."""
        if self._started_event:
            self.ctx.audit.post([self._session_event("end", error="COM_CHANGE_USER")])
            self._started_event = False
        self._close_upstream()
        self.cred, self.upstream_thread, self._token = None, None, None
        self.statements.clear()
        await self._log_in(req)
        self.front.login_succeeded(status=self.status_flags)
        self._flush()

    # ---- live policy --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Close when access ends: grant expiry or a revoked session / lease, checked every few seconds."""
        interval = self.ctx.policy_interval
        while self._ended is None:
            cred = self.cred
            delay = interval
            if cred is not None and cred.access_expires_at is not None:
                left = (cred.access_expires_at - datetime.now(timezone.utc)).total_seconds()
                if left <= 0:
                    self._end_access(f"access to {cred.datasource.name}/{cred.credential} expired")
                    break
                delay = min(delay, left)
            await asyncio.sleep(delay)
            cred = self.cred
            if cred is None or self.ctx.policy_check is None:
                continue
            try:
                reason = await self.ctx.policy_check(cred)
            except Exception as exc:  # noqa: BLE001 - a flaky check must not drop every session
                log.warning("policy check for session %s failed: %s", cred.session_id, type(exc).__name__)
                reason = None
            if reason and cred is self.cred:
                self._end_access(reason)
        # The upstream is gone; the client's next command hears why. A client that never sends one
        # is hung up on after a while.
        await asyncio.sleep(REVOKED_LINGER)
        status, reason = self._ended
        if self._goodbye is None:
            self._goodbye = (ConnectionEnded(f"connection closed by the gateway: {reason}"), status, reason)
        self.client.interrupt()

    def _end_access(self, reason: str) -> None:
        if self._ended is not None:
            return
        self._ended = (audit.DENIED, reason)
        log.info("mysql connection %s closed: %s", self.connection_id, reason)
        self._close_upstream()  # the database session ends now; a command in flight fails
        if self._started_event and self._cmd is None:
            # On record now, not when the client next speaks (a command in flight records it when
            # its relay fails, so the query's outcome comes first).
            self.ctx.audit.post([self._session_event("end", status=audit.DENIED, error=reason)])
            self._started_event = False

    def _on_upstream_gone(self) -> None:
        """The database hung up between commands (KILL CONNECTION, server shutdown)."""
        if self._goodbye is not None or self._ended is not None:
            return
        message = "the database closed the connection"
        raw = self.up.unsolicited if self.up is not None else b""
        if len(raw) > 4 and raw[4] == ERR_HEADER:
            try:
                err = parse_err(raw[4:4 + int.from_bytes(raw[:3], "little")])
                message = f"the database closed the connection: ({err.code}) {err.message}"
            except WireError:
                pass
        self._goodbye = (ConnectionEnded(message), audit.ERROR, message)
        self.client.interrupt()

    def _on_client_lost(self) -> None:
        self._client_gone = True
        if self._cmd is not None and self.up is not None:
            self.up.abort_relay(ConnectionLost("the client closed the connection"))

    # ---- audit ------------------------------------------------------------------------------------

    def _client_fields(self, text: str | None = None) -> dict:
        fields: dict = {"addr": self.peer}
        if text:
            fields.update(parse_tags(text))
        return fields

    def _session_event(self, kind: str, status: str = audit.OK, error: str | None = None) -> audit.Event:
        cred = self.cred
        return audit.session_event(
            kind, user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
            datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
            protocol=PROTOCOL, client=self._client_fields(), status=status, error=error,
            details={"connection_id": self.connection_id, "upstream_thread": self.upstream_thread}
            if kind == "end" else {"connection_id": self.connection_id})

    def _query_event(self, cmd: Command, text: str | None = None) -> audit.Event:
        cred = self.cred
        details = None
        if text is None:
            if isinstance(cmd, StmtExecute):
                real = self.statements.resolve(cmd.statement_id)
                text = self.statements.sql_for(cmd.statement_id)
                if text is None:
                    text = f"<unknown prepared statement {cmd.statement_id}>"
                details = {"prepared_statement": real if real is not None else cmd.statement_id}
            else:
                text = cmd.describe()
                if not isinstance(cmd, Query):
                    details = {"command": cmd.name}
        shown = text
        if len(shown) > QUERY_TEXT_LIMIT:
            shown = shown[:QUERY_TEXT_LIMIT] + f"... [truncated: {len(text)} characters in all]"
        event = audit.query_event(
            user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
            datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
            protocol=PROTOCOL, query=shown, client=self._client_fields(text))
        event.details = details
        return event

    def _post_outcome(self, event: audit.Event, started: float, scanner: ResponseScanner | None, *,
                      failure: str | None = None) -> None:
        if failure is not None:
            rows = (scanner.rows or None) if scanner is not None else None
            status = audit.CANCELLED if self._ended or self._goodbye else audit.ERROR
            self._post_end(event, started, rows, status, failure)
            return
        err = scanner.error
        if err is not None:
            status = audit.CANCELLED if err.code in _CANCELLED_CODES else audit.ERROR
            self._post_end(event, started, scanner.rows or None, status, f"({err.code}) {err.message}")
        else:
            self._post_end(event, started, scanner.rows or scanner.affected_rows, audit.OK, None)

    def _post_end(self, event: audit.Event, started: float, rows: int | None, status: str,
                  error: str | None) -> None:
        self.ctx.audit.post([audit.query_end_event(event, duration_ms=(time.perf_counter() - started) * 1000,
                                                   rows=rows, status=status, error=error)])

    def _post_denied(self, reason: str) -> None:
        req = self._login
        self.ctx.audit.post([audit.denied_event(
            user=None, reason=reason, proxy_id=self.ctx.proxy_id, datasource=req.datasource if req else None,
            credential=req.credential if req else None, protocol=PROTOCOL, client={"addr": self.peer})])

    # ---- closing ------------------------------------------------------------------------------------

    async def _send_final(self, error: BaseException | None, seq: int | None) -> None:
        """The last ERR, where the client can read it: not inside a half-sent answer or TLS handshake."""
        client = self.client
        if error is None or client.lost or client.transport is None or client.transport.is_closing():
            return
        if client.tls is not None and not client.tls.handshake_done:
            return
        if self._answered:
            return  # part of an answer went out: an ERR now would be read as a row
        if self.front.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        try:
            self.front.fail(error, seq=seq)
            self._flush()
            async with asyncio.timeout(2):
                await client.drain()
        except (ConnectionLost, OSError, TimeoutError, RuntimeError, WireError):
            pass

    def _close_upstream(self) -> None:
        up = self.up
        if up is None:
            return
        self.up = None if self._cmd is None else up  # a relay in flight still needs it to fail cleanly
        try:
            if not up.closed and self._cmd is None:
                up.send(COM_QUIT)
        except (ConnectionLost, OSError, RuntimeError):
            pass
        up.close()

    def _finish(self, status: str, error: str | None) -> None:
        self.ctx.registry.unregister(self.connection_id)
        if self.up is not None:
            self._cmd = None
            self.up.reset()  # a relay cut short by cancellation leaves nobody waiting for its answer
            self._close_upstream()
            self.up = None
        self.client.close()
        if self._started_event:
            if self._ended is not None:
                status, error = self._ended
            self.ctx.audit.post([self._session_event("end", status=status, error=error)])
            self._started_event = False
        self._token = None
        if self.front.phase is not Phase.CLOSED:
            self.front.closed()

    def __repr__(self) -> str:
        return f"MysqlSession(id={self.connection_id}, peer={self.peer}, user={self.cred.user if self.cred else None})"
