"""Which SQL runs when, in order: a pure model of one relayed connection's request/response flow.

Why this exists: the audit must name the statement that actually executes, *before* it executes,
while clients pipeline freely (Parse/Bind/Execute/Sync... without waiting). PostgreSQL answers
requests strictly in order, so every request that gets an answer pushes an expectation onto a FIFO
and every server message resolves the head. That gives rows and duration per statement and tells
which Parse/Bind really took effect.

Statement texts are *predicted* when an Execute is forwarded: a Bind takes the text of the newest
Parse for its statement name, an Execute the text of its portal's Bind. The prediction is exact when
whatever it depends on either already succeeded or sits in the same Sync segment (if that earlier
step fails, PostgreSQL skips everything up to Sync, so nothing runs). When it is not exact (a Parse
or Bind on a name that already exists, a Close or Parse from an earlier segment still unanswered,
or names touched by SQL-level PREPARE/DEALLOCATE/DISCARD/DECLARE) the tracker asks the glue for a
*barrier*: forward what came before, add a Flush, wait for the answers, then decide. Ordinary
drivers never trigger one.
"""

from __future__ import annotations

import re
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import QUERY_CANCELED, ServerProtocolError
from .framing import command_tag_rows, parse_error_fields

# Message type bytes.
Q, P_, B, E_, S_, D_, C_, H_, F_, X_ = (ord(c) for c in "QPBESDCHFX")
PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE = ord("1"), ord("2"), ord("3")
NO_DATA, PARAM_DESC, ROW_DESC = ord("n"), ord("t"), ord("T")
COMMAND_COMPLETE, EMPTY_QUERY, PORTAL_SUSPENDED = ord("C"), ord("I"), ord("s")
ERROR_RESPONSE, READY, FUNCTION_RESULT = ord("E"), ord("Z"), ord("V")

# Client messages whose payload the tracker reads (everything else streams through).
CLIENT_PARSED = "QPBECDF"
CLIENT_PREFIX_LIMITS = {"B": 1 << 20}  # see Session: large Binds are parsed from a bounded prefix
# Server messages it must see: with payload, and by type only.
SERVER_PARSED = "CEZS"  # S: ParameterStatus (the session checks client_encoding)
SERVER_OBSERVED = "123ntTIsGHWV"

_SQL_NAMESPACE_CHANGE = re.compile(r"\b(prepare|deallocate|discard|declare|close)\b", re.IGNORECASE)
_SQL_EXECUTE = re.compile(r"\bexecute\s+(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)", re.IGNORECASE)
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer statement/portal names
MAX_TRACKED_NAMES = 10_000  # per namespace and session
UNKNOWN_TEXT = "<statement text unknown to the gateway: prepared outside the extended protocol>"


class TrackerDesync(ServerProtocolError):
    """A server answer does not fit the requests sent: fail closed rather than audit wrongly."""


@dataclass(eq=False)
class Statement:
    """One audited execution: a simple Query, an extended-protocol Execute or a FunctionCall."""

    kind: str  # "query" | "execute" | "function"
    text: str
    started: float
    portal: str | None = None
    statement: str | None = None
    rows: int | None = None
    counted: int = 0  # DataRows seen (for PortalSuspended, which carries no tag)
    status: str = "ok"  # ok | error | cancelled
    error: str | None = None
    sqlstate: str | None = None
    duration_ms: float | None = None
    skipped: bool = False
    tag: object = None  # the glue's handle (the audit event written before forwarding)


@dataclass(eq=False)
class _Expect:
    kind: str  # parse bind describe close execute sync query function
    seg: int
    name: str | None = None  # statement or portal name (parse/bind/close)
    ns: str | None = None  # "S" or "P" for close
    text: str | None = None
    doubtful: bool = False  # predicted to fail (name already exists): outcome unknown until answered
    stmt: Statement | None = None


@dataclass
class _Names:
    """Predicted contents of one namespace (prepared statements or portals)."""

    text: dict[str, str | None] = field(default_factory=dict)  # None: exists, text unknown
    pending: dict[str, list[_Expect]] = field(default_factory=dict)  # unanswered ops per name


def _cstr(buf: bytes, off: int) -> tuple[str, int]:
    end = buf.find(b"\0", off)
    if end < 0:
        raise ValueError("unterminated string")
    return buf[off:end].decode("utf-8", "surrogateescape"), end + 1


def _raw_cstr(buf: bytes, off: int) -> tuple[bytes, int]:
    end = buf.find(b"\0", off)
    if end < 0:
        raise ValueError("unterminated string")
    return buf[off:end], end + 1


class StatementTracker:
    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._queue: deque[_Expect] = deque()
        self._seg = 0
        self._stmts = _Names()
        self._portals = _Names()
        self._portal_stmt: dict[str, str] = {}
        self._tainted = False  # SQL-level PREPARE/DECLARE may have created names we never saw
        self.txn_status = b"I"

    # ---- state -------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request is waiting for an answer."""
        return not self._queue

    @property
    def pending(self) -> int:
        return len(self._queue)

    def prepared_text(self, name: str) -> str | None:
        return self._stmts.text.get(name)

    @property
    def has_named_statements(self) -> bool:
        return len(self._stmts.text) > ("" in self._stmts.text)

    def retract_last(self) -> None:
        """Forget the newest request (it was refused and never forwarded)."""
        if self._queue:
            self._queue.pop()

    def abandon(self) -> list[Statement]:
        """The connection ended: statements still waiting for an answer, marked as cut off."""
        out = []
        while self._queue:
            op = self._queue.popleft()
            if op.stmt is not None and op.stmt.tag is not None:
                op.stmt.status = "cancelled"
                op.stmt.error = "connection closed before the statement finished"
                out.append(self._finish(op))
        return out

    # ---- client side ---------------------------------------------------------------------------

    def check_names(self, mtype: int, payload: bytes) -> str | None:
        """Why a Parse/Bind/Describe/Close/Execute must be refused before it is forwarded, or None.

        PostgreSQL truncates names to 63 bytes, so two longer names sharing those bytes are one name
        on the server but two here: the audit could name another statement than the one that runs.
        """
        try:
            if mtype == P_:
                names = [(self._stmts, _raw_cstr(payload, 0)[0])]
            elif mtype == B:
                portal, off = _raw_cstr(payload, 0)
                names = [(self._portals, portal), (self._stmts, _raw_cstr(payload, off)[0])]
            elif mtype == E_:
                names = [(self._portals, _raw_cstr(payload, 0)[0])]
            elif mtype in (D_, C_):
                names = [(self._stmts if payload[:1] == b"S" else self._portals, _raw_cstr(payload, 1)[0])]
            else:
                return None
        except (ValueError, IndexError):
            return None  # malformed: the server rejects it
        for _ns, raw in names:
            if len(raw) > MAX_NAME_BYTES:
                return (f"statement or portal name longer than {MAX_NAME_BYTES} bytes ({len(raw)} bytes): "
                        "the gateway refuses it because PostgreSQL would truncate it")
        if mtype in (P_, B):
            ns, raw = names[0]
            name = raw.decode("utf-8", "surrogateescape")
            if name and name not in ns.text and len(ns.text) + len(ns.pending) >= MAX_TRACKED_NAMES:
                return f"too many prepared statements or portals on this connection (at most {MAX_TRACKED_NAMES})"
        return None

    def needs_barrier(self, mtype: int, payload: bytes) -> bool:
        """Would the prediction for this message be a guess? Then the glue waits for answers first.

        Only a use of a name can need one (Bind uses a statement, Execute a portal), and only while
        an op on that name is unanswered and either predicted to fail or from an earlier Sync
        segment; forwarding everything before plus a Flush always gets those answered.
        """
        try:
            if mtype == B:
                _portal, off = _cstr(payload, 0)
                name, _ = _cstr(payload, off)
                return self._uncertain(self._stmts, name)
            if mtype == E_:
                portal, _ = _cstr(payload, 0)
                return self._uncertain(self._portals, portal)
        except ValueError:
            return False  # malformed: the server will reject it; on_client records it as such
        return False

    def _uncertain(self, names: _Names, name: str) -> bool:
        return any(op.doubtful or op.seg < self._seg for op in names.pending.get(name, ()))

    def _doubtful(self, names: _Names, name: str) -> bool:
        """Is a new definition of ``name`` possibly refused (because the name may already exist)?"""
        if not name:
            return False  # unnamed statements/portals are always replaced
        return name in names.text or bool(names.pending.get(name)) or self._tainted

    def on_client(self, mtype: int, payload: bytes | None) -> Statement | None:
        """Record a forwarded client message; returns the Statement to audit for Q / Execute / F."""
        now = self._clock()
        try:
            if mtype == Q:
                # Up to the first NUL, exactly as the server reads it (anything after is refused).
                text = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                stmt = Statement("query", text, now)
                self._push(_Expect("query", self._seg, stmt=stmt))
                self._note_sql(text)
                return stmt
            if mtype == P_:
                name, off = _cstr(payload, 0)
                text, _ = _cstr(payload, off)
                doubtful = self._doubtful(self._stmts, name)
                op = _Expect("parse", self._seg, name=name, text=text, doubtful=doubtful)
                self._push(op)
                self._stmts.pending.setdefault(name, []).append(op)
                if not doubtful:
                    self._stmts.text[name] = text
                return None
            if mtype == B:
                portal, off = _cstr(payload, 0)
                name, _ = _cstr(payload, off)
                text = self._stmts.text.get(name)
                doubtful = self._doubtful(self._portals, portal)
                op = _Expect("bind", self._seg, name=portal, text=text, doubtful=doubtful)
                self._portal_stmt[portal] = name  # for the audit details
                self._push(op)
                self._portals.pending.setdefault(portal, []).append(op)
                if not doubtful:
                    self._portals.text[portal] = text
                return None
            if mtype == E_:
                portal, _ = _cstr(payload, 0)
                text = self._portals.text.get(portal)
                stmt = Statement("execute", text if text is not None else UNKNOWN_TEXT, now, portal=portal,
                                 statement=self._bound_statement(portal))
                self._push(_Expect("execute", self._seg, stmt=stmt))
                self._note_sql(stmt.text)
                return stmt
            if mtype == D_:
                self._push(_Expect("describe", self._seg))
                return None
            if mtype == C_:
                ns = chr(payload[0]) if payload else "S"
                name, _ = _cstr(payload, 1)
                op = _Expect("close", self._seg, name=name, ns=ns)
                self._push(op)
                names = self._stmts if ns == "S" else self._portals
                names.pending.setdefault(name, []).append(op)
                # The text stays until CloseComplete: a Close skipped by an earlier error changes nothing.
                return None
            if mtype == F_:
                oid = struct.unpack_from("!I", payload)[0] if len(payload) >= 4 else 0
                stmt = Statement("function", f"<function call: oid {oid}>", now)
                self._push(_Expect("function", self._seg, stmt=stmt))
                return stmt
            if mtype == S_:
                self._push(_Expect("sync", self._seg))
                self._seg += 1
                return None
        except (ValueError, IndexError, struct.error):
            # Malformed: PostgreSQL answers it with an ErrorResponse; expect that answer.
            self._push(_Expect("malformed", self._seg))
        return None

    def _bound_statement(self, portal: str) -> str | None:
        return self._portal_stmt.get(portal)

    def _note_sql(self, text: str) -> None:
        if _SQL_NAMESPACE_CHANGE.search(text):
            self._tainted = True
            for names in (self._stmts, self._portals):
                for key in list(names.text):
                    if key:
                        names.text[key] = None

    def sql_execute_targets(self, text: str) -> dict[str, str | None]:
        """For SQL ``EXECUTE name``: the protocol-level statements it may run, with their texts."""
        out = {}
        for m in _SQL_EXECUTE.finditer(text):
            raw = m.group(1)
            name = raw[1:-1].replace('""', '"') if raw.startswith('"') else raw.lower()
            if name in self._stmts.text:
                out[name] = self._stmts.text[name]
        return out

    def _push(self, op: _Expect) -> None:
        self._queue.append(op)

    # ---- server side ---------------------------------------------------------------------------

    def on_server(self, mtype: int, payload: bytes | None, rows: int = 0) -> list[Statement]:
        """Resolve expectations with one server message; returns statements that just finished."""
        q = self._queue
        if rows and q and q[0].stmt is not None:
            q[0].stmt.counted += rows
        if not q:
            if mtype == READY and payload:
                self.txn_status = payload[:1]
                if self.txn_status == b"I":
                    self._drop_portals()
            return []  # NoticeResponse, ParameterStatus, async notifications, FATAL at shutdown
        head = q[0]
        kind = head.kind
        done: list[Statement] = []
        if mtype == COMMAND_COMPLETE:
            if kind in ("query", "execute"):
                tag_rows = command_tag_rows(payload or b"")
                stmt = head.stmt
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
            done.extend(self._on_error(payload or b""))
        elif mtype == READY:
            if payload:
                self.txn_status = payload[:1]
            done.extend(self._on_ready())
            if self.txn_status == b"I":
                self._drop_portals()
        # G/H/W (COPY), V (function result): intermediate, nothing to resolve.
        return done

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
        # the Execute it was for carries the server's error.
        carry = failed.stmt is None
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
                done.append(self._finish(op))
                return done
            if op.kind == "sync":
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

    def _expect(self, head: _Expect, kind: str, mtype: int) -> None:
        if head.kind != kind:
            self._desync(mtype, head)

    def _desync(self, mtype: int, head: _Expect):
        raise TrackerDesync(f"upstream answered {chr(mtype)!r} while the gateway expected an answer to "
                            f"{head.kind}; closing the connection so the audit cannot go wrong")
