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

The tracker is split by direction; this module assembles ``StatementTracker`` and holds its state:

* ``tracker_records`` -- ``Statement`` (one audited execution), the FIFO entries, ``TrackerDesync``.
* ``tracker_client``  -- the client side: requests pushed onto the FIFO, name predictions, barriers,
  SQL-level PREPARE/EXECUTE detection.
* ``tracker_server``  -- the server side: answers resolving the FIFO (rows, duration, errors).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..text_budget import GATEWAY

# re-exported: each name with a trailing comment is imported from ``tracker`` by the modules listed
from .tracker_client import (
    CLIENT_PARSED,  # session_relay.py
    MAX_TRACKED_NAMES,  # tests/wire/test_pg_hardening.py
    UNKNOWN_TEXT,  # tests/wire/test_pg_units.py, tests/wire/test_pg_hardening.py
    ClientSide,
)
from .tracker_records import (
    Statement,  # session_relay.py, session_close.py, session_audit.py
    TextMap,
    TrackerDesync,  # tests/wire/test_pg_units.py
    _Expect,
    _Names,
)
from .tracker_server import (
    SERVER_OBSERVED,  # relay.py
    SERVER_PARSED,  # relay.py
    ServerSide,
)

__all__ = [
    "CLIENT_PARSED",
    "MAX_TRACKED_NAMES",
    "SERVER_OBSERVED",
    "SERVER_PARSED",
    "UNKNOWN_TEXT",
    "Statement",
    "StatementTracker",
    "TrackerDesync",
]


COPY_IN_CLIENT = frozenset(b"dcfSH")  # what may come while the server takes COPY data


class StatementTracker(ClientSide, ServerSide):
    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._queue: deque[_Expect] = deque()
        self._seg = 0
        # Portals hold their statement's text too, alive after the statement is replaced (review):
        # both count, against one share of the gateway's budget.
        share = GATEWAY.share()
        self._stmts = _Names(text=TextMap(share))
        self._portals = _Names(text=TextMap(share))
        self._portal_stmt: dict[str, str] = {}
        self._tainted = False  # SQL-level PREPARE/DECLARE may have created names we never saw
        self._copy_in = False  # the server takes COPY data now, until the client's CopyDone/CopyFail
        self._copy_mark = 0  # ... and _copy_data was this when the COPY statement was sent
        self._copy_data = 0  # CopyData messages the client has sent
        self._skipping = False  # an extended-protocol error: the server ignores requests until a Sync
        # Requests that may run code (and so change client_encoding, which the server reports only
        # with its next ReadyForQuery), by push order: the last one sent, and the last request a
        # ReadyForQuery answered (Sync, Query, FunctionCall).
        self._pushed = 0
        self._last_exec = 0
        self._ready_upto = 0
        self._exec_before_last = 0  # _last_exec before the newest push
        self._parse_chars = 0  # size of Parses sent and not yet answered (with _stmts.text: the budget)
        self.txn_status = b"I"

    # ---- state -------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request is waiting for an answer."""
        return not self._queue

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def copy_in(self) -> bool:
        """The server is in COPY FROM STDIN mode and the client has not ended it yet: only CopyData,
        CopyDone, CopyFail, Flush and Sync may come (the server ignores Flush and Sync there)."""
        return self._copy_in

    def refused_in_copy(self, mtype: int) -> str | None:
        """Why a client message may not be forwarded while the server takes COPY data, or None.

        Anything but CopyData, CopyDone, CopyFail, Flush or Sync: the server would take it as bad data
        and never run it. A Sync after data: the server ignores it only while still in COPY, and bad
        data ends COPY early, after which it answers that Sync; nobody here can tell which happens."""
        if not self._copy_in:
            return None
        if mtype not in COPY_IN_CLIENT:
            return f"message {chr(mtype)!r} during COPY FROM STDIN: only CopyData, CopyDone, CopyFail, Flush " \
                   "and Sync may come until it ends"
        if mtype == ord("S") and self._copy_data > self._copy_mark:
            return "Sync after COPY data, before CopyDone or CopyFail: refused (the database may or may " \
                   "not answer it, so the audit could not follow)"
        return None

    def prepared_text(self, name: str) -> str | None:
        return self._stmts.text.get(name)

    @property
    def has_named_statements(self) -> bool:
        return len(self._stmts.text) > ("" in self._stmts.text)

    def retract_last(self) -> None:
        """Forget the newest request (it was refused and never forwarded)."""
        if self._queue:
            op = self._queue.pop()
            if op.order == self._pushed:  # it ran nothing: the encoding mark is as before it
                self._last_exec = self._exec_before_last

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
