"""``KILL [QUERY] <id>`` through the gateway: clients see gateway connection ids, not upstream threads.

Only the owner (the same sdm user) may kill a connection; the kill is audited like a statement.
"""

from __future__ import annotations

import time

from ... import errors as sdm_errors
from ...audit import events as audit
from ..sqlcomment import client_fields
from .commands import Com, Command, Query, ResponseKind
from .errors import (
    ER_KILL_DENIED_ERROR,
    ER_NO_SUCH_THREAD,
    ER_UNKNOWN_ERROR,
    SQLSTATE_GENERAL,
    CommandRefused,
    WireError,
)
from .ok_err_eof import ERR_HEADER, OK_HEADER, build_ok, parse_err
from .packets import Packet, frame_packets
from .session_audit import PROTOCOL, QUERY_TEXT_LIMIT
from .upstream import run_one_statement


class KillCommand:
    """Mixed into ``Session`` (its state is set up in ``Session.__init__``): KILL by gateway id."""

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
                protocol=PROTOCOL, query=text[:QUERY_TEXT_LIMIT], client=client_fields(self.peer, text))])
            front.reply_error(CommandRefused(message, code=ER_KILL_DENIED_ERROR, sqlstate=SQLSTATE_GENERAL), packet)
            return
        tcred = target.cred
        sql = f"KILL {'QUERY ' if query_only else ''}{target.upstream_thread}"
        event = self._query_event(cmd, text=text, details={"kill": {
            "connection_id": target_id, "upstream_thread": target.upstream_thread, "query_only": query_only,
            "datasource": tcred.datasource.name, "credential": tcred.credential}})
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
            # The unlocked credential goes straight into run_one_statement, which drops its secret
            # after the login: no name here keeps it for the statement's run (or an error's).
            answer, _ = await run_one_statement(
                await self.ctx.unlock_client.unlock(self._token.value, tcred.datasource.name, tcred.credential,
                                                    protocol=PROTOCOL, client_addr=self.peer),
                sql, timeout=self.ctx.connect_timeout)
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
