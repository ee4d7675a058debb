"""The statement tracker's client side: what each forwarded request (Query, Parse, Bind, Execute,
Describe, Close, FunctionCall, Sync) pushes onto the answer FIFO, the prediction of prepared
statement and portal names, and when that prediction needs a barrier.

Separate from ``tracker_server`` (which resolves the FIFO as answers arrive): this half decides
which SQL text an Execute will run *before* it is forwarded. ``StatementTracker`` (tracker.py)
combines both halves.
"""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING

from ..text_budget import PER_CONNECTION, text_size
from .tracker_records import Statement, _Expect, _Names

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

# Message type bytes.
Q, P_, B, E_, S_, D_, C_, H_, F_, X_ = (ord(c) for c in "QPBESDCHFX")
COPY_DONE, COPY_FAIL, COPY_DATA = ord("c"), ord("f"), ord("d")

# Client messages whose payload the tracker reads (everything else streams through).
CLIENT_PARSED = "QPBECDF"
CLIENT_PREFIX_LIMITS = {"B": 1 << 20}  # see Session: large Binds are parsed from a bounded prefix

_SQL_NAMESPACE_CHANGE = re.compile(r"\b(prepare|deallocate|discard|declare|close)\b", re.IGNORECASE)
_SQL_EXECUTE = re.compile(r"\bexecute\s+(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)", re.IGNORECASE)
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer statement/portal names
MAX_TRACKED_NAMES = 10_000  # per namespace and session
# Statement text the tracker holds per session (prepared statements, Parses awaiting an answer):
# 10,000 names of up to 1 MiB each would be 10 GiB in the one gateway process (review: 300 named
# statements took 300 MB). Past this budget a Parse is refused, as MySQL's side does (1461); the
# gateway-wide budget (text_budget.GATEWAY) bounds all sessions together.
MAX_TRACKED_TEXT = PER_CONNECTION
UNKNOWN_TEXT = "<statement text unknown to the gateway: prepared outside the extended protocol>"
_RUNS_CODE = frozenset(("query", "function", "bind", "execute"))  # Bind may plan, and planning may run functions
_SYNCING = frozenset(("query", "function", "sync"))  # answered with a ReadyForQuery


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


class Refusal(str):
    """Why a request is refused before it is forwarded, with the SQLSTATE to answer."""

    sqlstate = "42622"  # name_too_long

    @classmethod
    def limit(cls, message: str) -> "Refusal":
        refusal = cls(message)
        refusal.sqlstate = "54000"  # program_limit_exceeded
        return refusal


class ClientSide:
    """Part of ``StatementTracker``: records each client request as it is forwarded."""

    if TYPE_CHECKING:  # the StatementTracker state used here (set in StatementTracker.__init__)
        _clock: Callable[[], float]
        _queue: deque[_Expect]
        _seg: int
        _stmts: _Names
        _portals: _Names
        _portal_stmt: dict[str, str]
        _tainted: bool
        _copy_in: bool
        _copy_data: int
        _skipping: bool
        _pushed: int
        _last_exec: int
        _ready_upto: int
        _exec_before_last: int
        _parse_chars: int

    # ---- client side ---------------------------------------------------------------------------

    def check_names(self, mtype: int, payload: bytes) -> Refusal | None:
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
                return Refusal(f"statement or portal name longer than {MAX_NAME_BYTES} bytes ({len(raw)} bytes): "
                               "the gateway refuses it because PostgreSQL would truncate it")
        if mtype in (P_, B):
            refusal = self._text_room(mtype, payload, names)
            if refusal is not None:
                return refusal
        if mtype in (P_, B):
            ns, raw = names[0]
            name = raw.decode("utf-8", "surrogateescape")
            if name and name not in ns.text and len(ns.text) + len(ns.pending) >= MAX_TRACKED_NAMES:
                return Refusal.limit(f"too many prepared statements or portals on this connection (at most "
                                     f"{MAX_TRACKED_NAMES})")
        return None

    def _text_room(self, mtype: int, payload: bytes, names) -> Refusal | None:
        """A Parse adds its text, a Bind its statement's text again (a portal keeps it alive even
        after the statement is replaced: review). Both count, per connection and gateway-wide."""
        if mtype == P_:
            adds = len(payload) if payload.isascii() else 4 * len(payload)  # text_size, before decoding
        else:
            text = self._stmts.text.get(names[1][1].decode("utf-8", "surrogateescape"))
            adds = text_size(text) if text else 0
        held = self._stmts.text.size + self._portals.text.size + self._parse_chars
        if held + adds > MAX_TRACKED_TEXT:
            return Refusal.limit(f"too much prepared statement text on this connection (at most "
                                 f"{MAX_TRACKED_TEXT >> 20} MiB held for the audit): close (deallocate) "
                                 "some first")
        share = self._stmts.text.share
        if share is not None and not share.budget.room_for(adds):
            return Refusal.limit(f"the gateway holds too much prepared statement text for all sessions "
                                 f"(at most {share.budget.limit >> 20} MiB): try again later, or "
                                 "close (deallocate) some")
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

    def encoding_settled(self) -> bool:
        """Is client_encoding known to be what the server last reported (UTF8)? Only once every
        request has its answer and none that runs code went out after the last ReadyForQuery:
        PostgreSQL reports a changed client_encoding with that message, not when it changes, so a
        pipeline can switch it, send text, and switch back unseen (review)."""
        return self._last_exec <= self._ready_upto

    def encoding_wait_possible(self) -> bool:
        """Will a ReadyForQuery settle it without the client's next message? Only if a request
        that gets one (Sync, Query, FunctionCall) is queued at or after the last that ran code;
        not while a Bind or Execute waits for a Sync the client has not sent yet, nor after a
        COPY whose Syncs the server ignored (review: that waited for ever)."""
        last = self._last_exec
        return any(op.order >= last and op.kind in _SYNCING for op in self._queue)

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
        if mtype == COPY_DATA:
            self._copy_data += 1
            return None
        if self._skipping and mtype != S_:
            return self._ignored(mtype, payload, now)
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
                self._parse_chars += text_size(text)
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
                if self._copy_in:
                    return None  # the server ignores a Sync while it takes COPY data: no answer comes
                self._skipping = False  # this Sync ends the server's skipping
                self._push(_Expect("sync", self._seg))
                self._seg += 1
                return None
            if mtype in (COPY_DONE, COPY_FAIL):
                if self._copy_in:
                    self._copy_in = False
                elif self._queue:
                    # Sent before the server said it takes COPY data (or outside COPY, where the server
                    # ignores it): marks where a COPY that starts earlier in the queue would end.
                    self._push(_Expect("copy_end", self._seg))
                return None
        except (ValueError, IndexError, struct.error):
            # Malformed: PostgreSQL answers it with an ErrorResponse; expect that answer.
            self._push(_Expect("malformed", self._seg))
        return None

    def _ignored(self, mtype: int, payload: bytes | None, now: float) -> Statement | None:
        """A request sent while the server skips to the next Sync (after an extended-protocol
        error): it will never run and gets no answer. Nothing is queued or predicted for it; a
        statement is returned already finished (its record says it did not run)."""
        if mtype not in (Q, E_, F_):
            return None  # Parse/Bind/Close/Describe: ignored, so no name changes
        if mtype == Q:
            stmt = Statement("query", payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), now)
        elif mtype == E_:
            try:
                portal, _ = _cstr(payload, 0)
            except ValueError:
                portal = ""
            text = self._portals.text.get(portal)
            stmt = Statement("execute", text if text is not None else UNKNOWN_TEXT, now, portal=portal,
                             statement=self._bound_statement(portal))
        else:
            stmt = Statement("function", "<function call>", now)
        stmt.status, stmt.skipped, stmt.ignored = "error", True, True
        stmt.error = "not executed: an earlier message in the same pipeline failed"
        stmt.duration_ms = 0.0
        return stmt

    def _bound_statement(self, portal: str) -> str | None:
        return self._portal_stmt.get(portal)

    def _note_sql(self, text: str) -> None:
        # Every simple query comes here: a plain substring test first (a third of the regex's cost);
        # PostgreSQL folds only ASCII letters in keywords, so ASCII lower() finds every candidate.
        low = text.lower()
        if ("prepare" in low or "deallocate" in low or "discard" in low or "declare" in low or "close" in low) \
                and _SQL_NAMESPACE_CHANGE.search(text):
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
        op.data = self._copy_data
        self._pushed += 1
        op.order = self._pushed
        self._exec_before_last = self._last_exec
        if op.kind in _RUNS_CODE:
            self._last_exec = op.order
        self._queue.append(op)
