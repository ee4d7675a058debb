"""The audit records of a MySQL session: session.start/end, query and query.end, access.denied."""

from __future__ import annotations

import time

from ...audit import events as audit
from ...audit.query_records import QueryRecords, StartedQuery
from ..sqlcomment import client_fields
from .commands import Command, Query, StmtExecute, StmtFetch
from .errors import ER_QUERY_INTERRUPTED
from .responses import ResponseScanner

PROTOCOL = "mysql"
QUERY_TEXT_LIMIT = 1 << 20  # audit records keep at most 1 MiB of statement text
_CANCELLED_CODES = frozenset({ER_QUERY_INTERRUPTED, 1927, 3024})  # interrupted, killed, max_execution_time


class SessionAudit:
    """Mixed into ``Session`` (its state is set up in ``Session.__init__``): building and posting events."""

    def _session_event(self, kind: str, status: str = audit.OK, error: str | None = None) -> audit.Event:
        cred = self.cred
        return audit.session_event(
            kind, user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
            datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
            protocol=PROTOCOL, client=client_fields(self.peer), status=status, error=error,
            details={"connection_id": self.connection_id, "upstream_thread": self.upstream_thread}
            if kind == "end" else {"connection_id": self.connection_id, "charset": self.front.charset})

    def _query_event(self, cmd: Command, text: str | None = None, details: dict | None = None) -> StartedQuery:
        """The command's ``query`` record (written before it is forwarded)."""
        cred = self.cred
        cached = self._query_records
        if cached is None or cached[0] is not cred:  # made at the first command, again after a COM_CHANGE_USER
            cached = self._query_records = (cred, QueryRecords(
                user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
                datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
                protocol=PROTOCOL))
        if text is None:
            if isinstance(cmd, (StmtExecute, StmtFetch)):
                real = self.statements.resolve(cmd.statement_id)
                text = self.statements.sql_for(cmd.statement_id)
                if text is None:
                    text = f"<unknown prepared statement {cmd.statement_id}>"
                details = {"prepared_statement": real if real is not None else cmd.statement_id}
                if isinstance(cmd, StmtFetch):  # a cursor's next rows: its query.end counts them
                    details["command"] = cmd.name
                if self.statements.escaped(cmd.statement_id):
                    details["escaped"] = True
            else:
                text = cmd.describe()
                if not isinstance(cmd, Query):
                    details = {"command": cmd.name}
                if cmd.escaped:
                    details = {**(details or {}), "escaped": True}
        shown = text
        if len(shown) > QUERY_TEXT_LIMIT:
            shown = shown[:QUERY_TEXT_LIMIT] + f"... [truncated: {len(text)} characters in all]"
        return cached[1].start(shown, client_fields(self.peer, text), details)

    def _post_outcome(self, started: StartedQuery, begun: float, scanner: ResponseScanner | None, *,
                      failure: str | None = None) -> None:
        if failure is not None:
            rows = (scanner.rows or None) if scanner is not None else None
            status = audit.CANCELLED if self._ended or self._goodbye else audit.ERROR
            self._post_end(started, begun, rows, status, failure)
            return
        err = scanner.error
        if err is not None:
            status = audit.CANCELLED if err.code in _CANCELLED_CODES else audit.ERROR
            self._post_end(started, begun, scanner.rows or None, status, f"({err.code}) {err.message}")
        else:
            self._post_end(started, begun, scanner.rows or scanner.affected_rows, audit.OK, None)

    def _post_end(self, started: StartedQuery, begun: float, rows: int | None, status: str,
                  error: str | None) -> None:
        self.ctx.audit.post_records([started.end(duration_ms=(time.perf_counter() - begun) * 1000,
                                                 rows=rows, status=status, error=error)])

    def _post_denied(self, reason: str) -> None:
        throttle = self.ctx.throttle
        if throttle is not None and throttle.refusal(self.peer) is not None:
            return  # a throttled address: counted, and reported when the throttle ends
        req = self._login
        self.ctx.audit.post([audit.denied_event(
            user=None, reason=reason, proxy_id=self.ctx.proxy_id, datasource=req.datasource if req else None,
            credential=req.credential if req else None, protocol=PROTOCOL, client={"addr": self.peer})])
        if throttle is not None:
            throttle.failed(self.peer)
