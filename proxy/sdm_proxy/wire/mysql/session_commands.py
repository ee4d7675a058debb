"""The command phase of a MySQL session: read, classify, audit (fail closed), relay, record the outcome.

One command at a time. QUIT, CHANGE_USER, RESET_CONNECTION and KILL are the gateway's own business
(KILL in ``session_kill``, CHANGE_USER in ``session_login``); the rest is relayed byte for byte.
"""

from __future__ import annotations

import asyncio
import time

from ... import errors as sdm_errors
from ...audit import events as audit
from ...audit.query_records import StartedQuery
from .channel import ConnectionLost
from .commands import (
    ChangeUserCommand,
    Com,
    Command,
    GatewayCommand,
    ProcessKill,
    Query,
    ResponseKind,
    StmtExecute,
    StmtFetch,
    StmtOnId,
    StmtPrepare,
    classify,
)
from .errors import (
    CR_SERVER_LOST,
    ER_NET_PACKET_TOO_LARGE,
    ER_UNKNOWN_ERROR,
    ER_UNKNOWN_STMT_HANDLER,
    SQLSTATE_GENERAL,
    ClientProtocolError,
    CommandRefused,
    ConnectionEnded,
    ServerProtocolError,
)
from .charset_guard import check_statement, may_switch_charset, unsafe_charset_name
from .kill import parse_kill
from .machine import CommandReceived, LoginRequest
from .packets import Packet, PacketReader, frame
from .responses import ResponseScanner
from .session_audit import QUERY_TEXT_LIMIT
from .session_close import _Close, _message

# Commands that run nothing worth a record of their own (their effect is audited elsewhere: a
# prepared statement when it is executed). COM_STMT_FETCH is recorded: a cursor's rows come with it
# (review: its execute recorded 0 rows and the fetched ones, or a fetch's error, went unrecorded).
_NOT_AUDITED = frozenset({Com.PING, Com.STATISTICS, Com.SET_OPTION, Com.STMT_PREPARE, Com.STMT_CLOSE,
                          Com.STMT_RESET, Com.STMT_SEND_LONG_DATA, Com.QUIT, Com.CHANGE_USER})

_HANDLER_OF = {Com.STMT_EXECUTE: "mysqld_stmt_execute", Com.STMT_FETCH: "mysqld_stmt_fetch",
               Com.STMT_RESET: "mysqld_stmt_reset"}  # as the server names them in ER_UNKNOWN_STMT_HANDLER


class CommandPhase:
    """Mixed into ``Session`` (its state is set up in ``Session.__init__``): the command loop and relay."""

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
        cmd = None
        try:
            cmd = classify(packet.payload, capabilities=front.capabilities)
            if isinstance(cmd, (Query, StmtPrepare)) and len(cmd.sql) > QUERY_TEXT_LIMIT:
                # As a server past max_allowed_packet does: an ERR, then the connection ends. Nothing
                # runs that the audit would record truncated (the PostgreSQL side refuses the same).
                raise _Close(ClientProtocolError(
                    f"statement refused: {len(cmd.sql)} characters, longer than the {QUERY_TEXT_LIMIT} the audit "
                    "records", code=ER_NET_PACKET_TOO_LARGE), seq=packet.next_seq)
            if isinstance(cmd, GatewayCommand) and packet.next_seq != 1:
                # The gateway sends its own one-frame packet upstream for these, so the answer's
                # sequence ids would not be the ones this client waits for (review: a desync).
                raise CommandRefused(f"{cmd.name} of {len(packet.payload)} bytes is not one the gateway takes")
            kill = None
            if isinstance(cmd, (Query, StmtPrepare)):
                # Read from the bytes the server reads (the audit's text escapes non-UTF-8 bytes).
                text = packet.payload[1:]
                check_statement(text)  # no switch to a charset the audit cannot read; no unaudited text
                if b"kill" in text.lower():  # parse_kill costs ~0.1 s a MiB: only where it may find one
                    kill = parse_kill(text.decode("latin-1"))
            if kill is not None and isinstance(cmd, StmtPrepare):
                raise CommandRefused("KILL cannot be prepared through the gateway")
            if isinstance(cmd, StmtPrepare):
                self.statements.check_room(cmd.sql)
            if isinstance(cmd, (StmtExecute, StmtFetch, StmtOnId)) and self.statements.sql_for(cmd.statement_id) is None:
                # A statement whose text the gateway never saw prepared is not relayed: its record
                # could not say what runs. The server, not knowing it either, would say the same.
                if cmd.response is ResponseKind.NONE:
                    return True  # CLOSE / SEND_LONG_DATA: the server ignores these for an unknown id
                raise CommandRefused(
                    f"Unknown prepared statement handler ({cmd.statement_id}) given to {_HANDLER_OF[cmd.code]}",
                    code=ER_UNKNOWN_STMT_HANDLER, sqlstate=SQLSTATE_GENERAL)
        except CommandRefused as exc:
            if isinstance(cmd, StmtPrepare):
                # Never relayed, so it prepared nothing: MariaDB's "last prepared statement" id (a
                # pipelined EXECUTE after it) must not name the one before.
                self.statements.prepare_failed()
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
        if self._may_switch_charset(cmd, packet):
            await self._read_back_charset()
        return True

    def _may_switch_charset(self, cmd: Command, packet: Packet) -> bool:
        if isinstance(cmd, Query):
            return may_switch_charset(packet.payload[1:])
        if isinstance(cmd, StmtExecute):
            text = self.statements.sql_for(cmd.statement_id)
            return text is not None and may_switch_charset(text.encode("utf-8", "surrogateescape"))
        return False

    async def _read_back_charset(self) -> None:
        """Ask the server which client character set the session has now (charset_guard reads
        statements; this does not depend on reading them right). One the audit cannot read ends
        the session before its next statement."""
        up = self.up
        if up is None or self._ended is not None:
            return
        answer = bytearray()
        try:
            up.expect(ResponseScanner(ResponseKind.RESULT, capabilities=self.front.capabilities, seq=1),
                      keep=answer)
            up.send(frame(b"\x03SELECT @@character_set_client", 0))
            await up.drain()
            await up.relay()
        except (ConnectionLost, ServerProtocolError) as exc:
            up.reset()
            raise self._lost(exc) from None
        name = first_text_value(bytes(answer))
        if name is None or unsafe_charset_name(name):
            self._end_access(f"the client character set became {name or 'unknown'}, which the audit cannot read "
                             "as the server does", status=audit.ERROR)

    async def _audit_or_refuse(self, event: StartedQuery, packet: Packet) -> bool:
        """Write the record before the statement runs; if the log is down, refuse it (fail closed)."""
        try:
            await self.ctx.audit.write_records([event.record])
        except sdm_errors.AuditUnavailable as exc:
            self.front.reply_error(CommandRefused(f"statement refused: {exc.message}", code=ER_UNKNOWN_ERROR,
                                                  sqlstate=SQLSTATE_GENERAL), packet)
            return False
        self.commands += 1
        return True

    async def _relay(self, packet: Packet, cmd: Command, payload: bytes, event: StartedQuery | None) -> None:
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


def first_text_value(answer: bytes) -> str | None:
    """The first column of the one row of a text result (``SELECT @@x``), or None."""
    reader = PacketReader(limit=1 << 20, error=ServerProtocolError, expect_seq=None)
    reader.feed(answer)
    packets = []
    while (p := reader.next_packet()) is not None:
        packets.append(p.payload)
    if len(packets) < 4 or packets[0][:1] == b"\xff":
        return None
    row = packets[-2]  # [count, column, (EOF,) row, EOF/OK]
    if not row or row[0] >= 0xFB:  # NULL, or not a short string
        return None
    return row[1:1 + row[0]].decode("ascii", "replace")
