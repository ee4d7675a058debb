"""The audit events of one PostgreSQL session: session start/end, each statement and its outcome,
and the access.denied of a login that never got as far as the unlock."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...audit import events as audit
from ...audit.query_records import QueryRecords, StartedQuery
from ..sqlcomment import client_fields
from .upstream import dropped_params

if TYPE_CHECKING:
    import asyncio

    from ...unlock.client import UnlockedCredential
    from .server import ListenerContext
    from .tracker import Statement, StatementTracker

PROTOCOL = "postgres"
QUERY_TEXT_LIMIT = 1 << 20  # audit records keep at most 1 MiB of statement text


class SessionAudit:
    """Part of ``Session``: builds and posts its audit events (used by every phase)."""

    if TYPE_CHECKING:  # the Session state read here (set in Session.__init__ and the login)
        ctx: ListenerContext
        peer: str | None
        params: dict[str, str]
        cred: UnlockedCredential | None
        tracker: StatementTracker
        _replenish: asyncio.TimerHandle | None
        _spare_due: bool
        _query_records: QueryRecords | None  # made at the first statement, once the login is known

        # from LoginPhase:
        def _spare_soon(self) -> None: ...

    def _session_event(self, kind: str, status: str = audit.OK, error: str | None = None) -> audit.Event:
        cred = self.cred
        return audit.session_event(
            kind, user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
            datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
            protocol=PROTOCOL, client=client_fields(self.peer), status=status, error=error,
            details=self._start_details() if kind == "start" else None)

    def _start_details(self) -> dict | None:
        dropped = dropped_params(self.params)
        return {"dropped_startup_parameters": audit.clean_text(dropped)} if dropped else None

    def _query_event(self, stmt: Statement) -> StartedQuery:
        """The statement's ``query`` record (written by the relay before it forwards the statement)."""
        records = self._query_records
        if records is None:
            cred = self.cred
            records = self._query_records = QueryRecords(
                user=cred.user, session_id=cred.session_id, proxy_id=self.ctx.proxy_id,
                datasource=cred.datasource.name, credential=cred.credential, db_user=cred.db_user,
                protocol=PROTOCOL)
        text = stmt.text
        if len(text) > QUERY_TEXT_LIMIT:
            text = text[:QUERY_TEXT_LIMIT] + f"... [truncated: {len(stmt.text)} characters in all]"
        details = None
        if stmt.kind == "execute" and stmt.statement:
            details = {"prepared_statement": stmt.statement}
        elif stmt.kind == "query" and self.tracker.has_named_statements:
            # SQL `EXECUTE name` may run a statement prepared over the protocol: record its text.
            targets = self.tracker.sql_execute_targets(stmt.text)
            if targets:
                details = {"executes": targets}
        return records.start(text, client_fields(self.peer, stmt.text), details)

    def _record_outcomes(self, stmts: list[Statement]) -> None:
        if self._replenish is not None and not self._spare_due:
            self._spare_soon()
        records = []
        for s in stmts:
            if s.tag is None:
                continue
            rows = s.rows if s.rows is not None else (s.counted or None)
            records.append(s.tag.end(duration_ms=s.duration_ms, rows=rows, status=s.status, error=s.error,
                                     command=s.command))
        self.ctx.audit.post_records(records)

    def _post_denied(self, reason: str) -> None:
        throttle = self.ctx.throttle
        if throttle is not None and throttle.refusal(self.peer) is not None:
            return  # a throttled address: counted, and reported when the throttle ends
        params = self.params
        self.ctx.audit.post([audit.denied_event(
            user=None, reason=reason, proxy_id=self.ctx.proxy_id, datasource=params.get("database"),
            credential=params.get("user"), protocol=PROTOCOL, client={"addr": self.peer})])
        if throttle is not None:
            throttle.failed(self.peer)
