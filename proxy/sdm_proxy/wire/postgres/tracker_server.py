"""The statement tracker's server side: every server message resolves the head of the answer FIFO,
giving each statement its rows, duration and outcome, and settling which Parse/Bind/Close took effect.

Separate from ``tracker_client`` (which fills the FIFO): this half runs once per reported server
message on the relay, and fails closed (``TrackerDesync``) when an answer fits no request.
``StatementTracker`` (tracker.py) combines both halves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..text_budget import text_size
from .errors import QUERY_CANCELED
from .framing_parse import command_tag, parse_error_fields
from .tracker_records import Statement, TrackerDesync, _Expect

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

    from .tracker_records import _Names

# Message type bytes (server answers).
PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE = ord("1"), ord("2"), ord("3")
NO_DATA, PARAM_DESC, ROW_DESC = ord("n"), ord("t"), ord("T")
COMMAND_COMPLETE, EMPTY_QUERY, PORTAL_SUSPENDED = ord("C"), ord("I"), ord("s")
ERROR_RESPONSE, READY, FUNCTION_RESULT = ord("E"), ord("Z"), ord("V")
COPY_IN_RESPONSE, COPY_BOTH_RESPONSE = ord("G"), ord("W")
PARAMETER_STATUS = ord("S")

# Server messages the tracker must see: with payload, and by type only.
SERVER_PARSED = "CEZS"  # S: ParameterStatus (the session checks client_encoding)
SERVER_OBSERVED = "123ntTIsGHWV"


class ServerSide:
    """Part of ``StatementTracker``: resolves the requests' expectations with the server's answers."""

    if TYPE_CHECKING:  # the StatementTracker state used here (set in StatementTracker.__init__)
        _clock: Callable[[], float]
        _queue: deque[_Expect]
        _stmts: _Names
        _portals: _Names
        _portal_stmt: dict[str, str]
        _ready_upto: int
        _parse_chars: int
        _copy_in: bool
        _copy_mark: int
        _skipping: bool
        txn_status: bytes

    # ---- server side ---------------------------------------------------------------------------

    def on_server(self, mtype: int, payload: bytes | None, rows: int = 0) -> list[Statement]:
        """Resolve expectations with one server message; returns statements that just finished."""
        q = self._queue
        if rows and q and q[0].stmt is not None:
            q[0].stmt.counted += rows
        if not q:
            if mtype in (ERROR_RESPONSE, PARAMETER_STATUS):
                return []  # FATAL at shutdown or a timeout; a setting that changed (also unasked)
            # An answer with nothing asked: the tracker's model of the stream is wrong (something the
            # server took differently from us), so what it records next could be too. Fail closed.
            raise TrackerDesync(f"upstream answered {chr(mtype)!r} with no request pending; closing the "
                                "connection so the audit cannot go wrong")
        head = q[0]
        kind = head.kind
        done: list[Statement] = []
        if mtype == COMMAND_COMPLETE:
            if kind in ("query", "execute"):
                command, tag_rows = command_tag(payload or b"")
                stmt = head.stmt
                _note_command(stmt, command)
                if tag_rows is not None:
                    stmt.rows = tag_rows if stmt.rows is None or kind == "execute" else stmt.rows + tag_rows
                if kind == "execute":
                    done.append(self._finish(q.popleft()))
            else:
                self._desync(mtype, head)
        elif mtype in (EMPTY_QUERY, PORTAL_SUSPENDED):
            if kind == "execute":
                stmt = head.stmt
                stmt.rows = 0 if mtype == EMPTY_QUERY else stmt.counted
                done.append(self._finish(q.popleft()))
            elif not (kind == "query" and mtype == EMPTY_QUERY):
                self._desync(mtype, head)
        elif mtype == PARSE_COMPLETE:
            self._expect(head, "parse", mtype)
            self._resolve(q.popleft(), True)
        elif mtype == BIND_COMPLETE:
            self._expect(head, "bind", mtype)
            self._resolve(q.popleft(), True)
        elif mtype == CLOSE_COMPLETE:
            self._expect(head, "close", mtype)
            self._resolve(q.popleft(), True)
        elif mtype in (ROW_DESC, NO_DATA):
            if kind == "describe":
                q.popleft()
            elif not (kind == "query" and mtype == ROW_DESC):
                self._desync(mtype, head)
        elif mtype == PARAM_DESC:
            self._expect(head, "describe", mtype)
        elif mtype == ERROR_RESPONSE:
            self._copy_in = False  # an error ends COPY FROM STDIN; the client's CopyDone is then ignored
            done.extend(self._on_error(payload or b""))
        elif mtype == READY:
            if payload:
                self.txn_status = payload[:1]
            done.extend(self._on_ready())
            if self.txn_status == b"I":
                self._drop_portals()
        elif mtype in (COPY_IN_RESPONSE, COPY_BOTH_RESPONSE) and kind in ("query", "execute"):
            self._enter_copy_in()
        # H (COPY TO), V (function result): intermediate, nothing to resolve.
        while q and q[0].kind == "copy_end":
            q.popleft()  # a CopyDone/CopyFail no COPY took: the server ignored it, no answer comes
        return done

    def _enter_copy_in(self) -> None:
        """The head statement's COPY FROM STDIN started. Until the client's CopyDone or CopyFail the
        server ignores Sync (and Flush): drop the Syncs already queued behind it, up to the CopyDone
        if that came already; else the client side leaves out those still to come (``_copy_in``).
        A Sync after COPY data fails closed: bad data ends COPY early, and the server then answers it."""
        q = self._queue
        mark = q[0].data
        i = 1
        while i < len(q):
            kind = q[i].kind
            if kind == "sync" and q[i].data > mark:
                raise TrackerDesync("a Sync was sent after COPY data, before CopyDone: the database may or "
                                    "may not answer it; closing the connection so the audit cannot go wrong")
            if kind == "sync":
                del q[i]
            elif kind == "copy_end":
                del q[i]
                return
            else:
                # The server reads this request as COPY data gone wrong, fails the COPY and never runs
                # it: what the audit recorded as started would not match what ran. Fail closed.
                raise TrackerDesync(f"a {kind} request was pipelined into COPY FROM STDIN")
        self._copy_in, self._copy_mark = True, mark

    def _on_error(self, payload: bytes) -> list[Statement]:
        q = self._queue
        fields = parse_error_fields(payload)
        code, message = fields.get("C"), fields.get("M", "")
        head = q[0]
        if head.kind in ("query", "function"):
            stmt = head.stmt  # simple query: the error ends this statement; ReadyForQuery follows
            stmt.status = "cancelled" if code == QUERY_CANCELED else "error"
            stmt.error, stmt.sqlstate = f"{code}: {message}" if code else message, code
            return []
        if head.kind == "sync":
            return []  # e.g. a COMMIT failing at Sync; ReadyForQuery follows
        done = []
        failed = q.popleft()
        if failed.stmt is not None:
            failed.stmt.status = "cancelled" if code == QUERY_CANCELED else "error"
            failed.stmt.error, failed.stmt.sqlstate = f"{code}: {message}" if code else message, code
            done.append(self._finish(failed))
        else:
            self._resolve(failed, False)
        # PostgreSQL now ignores everything up to the next Sync: those requests get no answer. When the
        # failure was in preparing a statement (Parse/Bind/Describe: e.g. 1/0 folded at plan time),
        # the Execute it was for carries the server's error. With no Sync queued yet, requests still
        # to come are ignored too, until the client's Sync (``ClientSide._ignored``).
        carry = failed.stmt is None
        self._skipping = not any(op.kind == "sync" for op in q)
        while q and q[0].kind != "sync":
            op = q.popleft()
            if carry and op.stmt is not None:
                carry = False
                op.stmt.status = "cancelled" if code == QUERY_CANCELED else "error"
                op.stmt.error, op.stmt.sqlstate = f"{code}: {message}" if code else message, code
                op.stmt.skipped = True
                done.append(self._finish(op))
                continue
            done.extend(self._skip(op))
        return done

    def _on_ready(self) -> list[Statement]:
        q = self._queue
        done = []
        while q:
            op = q.popleft()
            if op.kind in ("query", "function"):
                self._ready_upto = op.order
                done.append(self._finish(op))
                return done
            if op.kind == "sync":
                self._ready_upto = op.order
                return done
            done.extend(self._skip(op))
        return done

    def _drop_portals(self) -> None:
        """Idle, outside a transaction: every portal is gone (except those re-bound since, pending)."""
        portals = self._portals
        for name in [n for n in portals.text if n not in portals.pending]:
            del portals.text[name]
        for name in [n for n in self._portal_stmt if n not in portals.pending]:
            del self._portal_stmt[name]

    def _skip(self, op: _Expect) -> list[Statement]:
        if op.stmt is not None:
            op.stmt.status, op.stmt.skipped = "error", True
            op.stmt.error = "not executed: an earlier message in the same pipeline failed"
            return [self._finish(op)]
        self._resolve(op, False)
        return []

    def _finish(self, op: _Expect) -> Statement:
        stmt = op.stmt
        stmt.duration_ms = (self._clock() - stmt.started) * 1000.0
        return stmt

    def _resolve(self, op: _Expect, ok: bool) -> None:
        """Parse/Bind/Close answered (ok) or failed/skipped: settle the namespace prediction."""
        if op.kind not in ("parse", "bind", "close"):
            return
        if op.kind == "parse":
            self._parse_chars -= text_size(op.text)
        names = self._stmts if (op.kind == "parse" or (op.kind == "close" and op.ns == "S")) else self._portals
        ops = names.pending.get(op.name)
        if ops:
            try:
                ops.remove(op)
            except ValueError:
                pass
            if not ops:
                del names.pending[op.name]
        if op.kind == "close":
            if ok:
                names.text.pop(op.name, None)  # gone; a later Parse of the name settles on its own answer
            return
        later = bool(names.pending.get(op.name))  # newer ops on this name already re-predicted it
        if ok:
            if op.doubtful or not later:
                names.text[op.name] = op.text  # this definition took effect
        elif op.doubtful:
            if op.name not in names.text:
                names.text[op.name] = None  # refused: maybe because it exists (SQL PREPARE), text unknown
        elif not later:
            names.text.pop(op.name, None)  # a new definition that failed: the name does not exist
            if op.kind == "bind":
                self._portal_stmt.pop(op.name, None)  # (review: an aborted transaction's Binds piled up)

    def _expect(self, head: _Expect, kind: str, mtype: int) -> None:
        if head.kind != kind:
            self._desync(mtype, head)

    def _desync(self, mtype: int, head: _Expect):
        raise TrackerDesync(f"upstream answered {chr(mtype)!r} while the gateway expected an answer to "
                            f"{head.kind}; closing the connection so the audit cannot go wrong")


MAX_COMMANDS_TEXT = 256  # a simple Query may hold many statements: their commands, cut short


def _note_command(stmt: Statement, command: str) -> None:
    """What the server says it ran, for the record (``query.end`` ``details.command``): a
    protocol-level prepared statement redefined by server-side code shows here as a mismatch."""
    if stmt.command is None:
        stmt.command = command
    elif len(stmt.command) < MAX_COMMANDS_TEXT:
        stmt.command = f"{stmt.command},{command}"[:MAX_COMMANDS_TEXT]
