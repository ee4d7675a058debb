"""Reading the audit log: head, tail, paging through every event, export, and which ids it holds.

``AuditLog`` (``log.py``, the writer) inherits these; they need only ``self.db``. Reads run in
short transactions (``READ_CHUNK`` rows each) so they never hold SQLite's write lock for long.
"""

from __future__ import annotations

import io
import json
import logging
from typing import IO, Iterable, Iterator, Sequence

from sqlalchemy import func, or_, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from ..control.db import StateDB
from ..control.models import AuditCheckpoint, AuditEvent, AuditHead
from ..errors import SdmError, StateError
from .chain import GENESIS
from .checkpoints import Checkpoint
from .events import Event
from .records import Stamp
from .sink import SinkError, event_line

EVENTS = AuditEvent.__table__
HEAD = AuditHead.__table__
CHECKPOINTS = AuditCheckpoint.__table__
HEAD_ID = 1
log = logging.getLogger("sdm.audit")  # as the writer (log.py) reports
READ_CHUNK = 2000  # rows per short read transaction (keeps the SQLite write lock brief)


class AuditReader:
    db: StateDB

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest event; (0, GENESIS) for an empty log."""
        with self.db.transaction() as s:
            row = s.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID)).first()
        return (int(row[0]), row[1]) if row else (0, GENESIS)

    def tail(self, n: int = 20, user: str | None = None, types: Sequence[str] | None = None,
             since: str | None = None) -> list[Event]:
        """The newest ``n`` events, oldest first. ``types`` entries ending in ``*`` match a prefix;
        ``since`` is an event timestamp (``now_ts`` format): only events stamped at or after it."""
        # seq 1 and up: a row stored below is in no chain (verify reports it), so it is no event to show.
        q = (select(EVENTS.c.seq, EVENTS.c.body, EVENTS.c.hash).where(EVENTS.c.seq >= 1)
             .order_by(EVENTS.c.seq.desc()).limit(n))
        if user is not None:
            q = q.where(EVENTS.c.user == user)
        if since is not None:
            q = q.where(EVENTS.c.ts >= since)
        if types:
            exact = [t for t in types if not t.endswith("*")]
            prefixes = [t[:-1] for t in types if t.endswith("*")]
            conds = [EVENTS.c.type.in_(exact)] if exact else []
            conds += [EVENTS.c.type.startswith(p, autoescape=True) for p in prefixes]
            q = q.where(or_(*conds))
        try:
            with self.db.transaction() as s:
                rows = s.execute(q).all()
        except (SQLAlchemyError, SdmError) as exc:
            raise StateError(f"cannot read the audit log: {_reason(exc)}") from None
        return [_event_from_row(*r) for r in reversed(rows)]

    def known_ids(self, events: Iterable[Event]) -> set[str]:
        """Which of these events (by id) the chain already holds (spool recovery skips them).

        ``id`` has no index (random ids made every insert slow). A row keeps its event's own
        ``ts``, so a match lies at or after the first row whose ``ts`` reaches the smallest one
        asked about: ids are read from there on in seq order, ``READ_CHUNK`` at a time, and matched
        here. Recovery asks about recent events, so that stretch is short."""
        wanted = _wanted(events)
        if not wanted:
            return set()
        first = self._first_seq_since(min(wanted.values()))
        found: set[str] = set()
        if first is None:
            return found
        for _, id_ in _iter_rows(self.db, (EVENTS.c.seq, EVENTS.c.id), after=first - 1):
            if id_ in wanted:
                found.add(id_)
                if len(found) == len(wanted):
                    break
        return found

    def _first_seq_since(self, ts: str) -> int | None:
        """The seq of the first event with ``ts`` at or after this one, read by the ``ts`` index.

        ``seq + 0``: a bare ``min(seq)`` lets SQLite (and PostgreSQL's planner) walk the primary key
        from seq 1 until a row matches, which for a recent ``ts`` is most of the log."""
        with self.db.transaction() as s:
            return s.execute(select(func.min(EVENTS.c.seq + 0)).where(EVENTS.c.ts >= ts)).scalar()

    def iter_events(self) -> Iterator[Event]:
        """Every event in seq order, read in short chunks (never one long read lock)."""
        for seq, body, h in _iter_rows(self.db, (EVENTS.c.seq, EVENTS.c.body, EVENTS.c.hash)):
            yield _event_from_row(seq, body, h)

    def export_jsonl(self, stream: IO) -> int:
        """Write the whole log in the sink's format (checkpoint lines included); returns #events.

        ``stream`` may be text (``sys.stdout``) or binary. The output verifies with ``verify_jsonl``
        and can replace a lost or damaged sink file.
        """
        binary = not isinstance(stream, io.TextIOBase)
        with self.db.transaction() as s:
            cps = {
                r[0]: Checkpoint(*r)
                for r in s.execute(
                    select(CHECKPOINTS.c.seq, CHECKPOINTS.c.hash, CHECKPOINTS.c.ts, CHECKPOINTS.c.signature)
                )
            }
        n = 0
        for seq, body, h in _iter_rows(self.db, (EVENTS.c.seq, EVENTS.c.body, EVENTS.c.hash)):
            text = event_line(seq, body, h) + "\n"
            if seq in cps:
                text += cps[seq].to_line() + "\n"
            stream.write(text.encode("utf-8") if binary else text)
            n += 1
        stream.flush()
        return n


def _iter_rows(db: StateDB, columns, *, after: int = 0) -> Iterator[tuple]:
    """Rows of audit_events past seq ``after`` in seq order (``columns`` start with seq),
    READ_CHUNK per short transaction (keyset pagination).

    Appends only ever add rows after the head, so paging by seq sees a consistent prefix.
    """
    last = after
    while True:
        with db.transaction() as s:
            rows = s.execute(
                select(*columns).where(EVENTS.c.seq > last).order_by(EVENTS.c.seq).limit(READ_CHUNK)
            ).all()
        yield from rows
        if len(rows) < READ_CHUNK:
            return
        last = rows[-1][0]


def known_ids_in(s: Session, events: Iterable[Event]) -> set[str]:
    """``AuditReader.known_ids`` inside the caller's transaction (the writer's, once it holds the
    chain's head: nothing can be chained concurrently then). For a retried batch: recent events,
    so the stretch read from the first matching ``ts`` on is short."""
    wanted = _wanted(events)
    if not wanted:
        return set()
    first = s.execute(select(func.min(EVENTS.c.seq + 0)).where(EVENTS.c.ts >= min(wanted.values()))).scalar()
    found: set[str] = set()
    if first is None:
        return found
    last = first - 1
    while True:  # in chunks, stopping once all are found: this runs holding the chain's lock
        rows = s.execute(select(EVENTS.c.seq, EVENTS.c.id).where(EVENTS.c.seq > last)
                         .order_by(EVENTS.c.seq).limit(READ_CHUNK)).all()
        found.update(id_ for _, id_ in rows if id_ in wanted)
        if len(rows) < READ_CHUNK or len(found) == len(wanted):
            return found
        last = rows[-1][0]


def not_chained(s: Session, records: Sequence[tuple]) -> list[int]:
    """Indexes of the records ``(id, ts, ...)`` the chain does not hold yet (the writer asks with
    the head locked, before it retries a batch that may have been committed after all)."""
    known = known_ids_in(s, [Stamp(r[0], r[1]) for r in records])
    if known:
        log.warning("%d audit event(s) of a batch that failed were chained after all; not chaining "
                    "them again", len(known))
    return [i for i, r in enumerate(records) if r[0] not in known]


def _wanted(events: Iterable[Event]) -> dict[str, str]:
    return {ev.id: ev.ts for ev in events if isinstance(ev.ts, str)}  # no ts: never chained


def _event_from_row(seq: int, body: str, hash_: str) -> Event:
    ev = Event.from_dict(json.loads(body))
    ev.seq, ev.hash = seq, hash_
    return ev


def _reason(exc: BaseException) -> str:
    """A short, payload-free reason: the driver's message, not the SQL and its parameters."""
    if isinstance(exc, SdmError):
        return exc.message
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"state database error: {exc.orig}"
    if isinstance(exc, SinkError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"
