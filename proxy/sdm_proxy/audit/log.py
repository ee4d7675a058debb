"""The audit log writer: append to the chain, fail closed, checkpoint (reading: ``reader.py``).

Order of one append (``_write``), and why:

1. take this process's lock, then the sink's ``flock`` (same order everywhere: no deadlock), so
   sink lines land in seq order even with several writers;
2. in ONE database transaction: lock the head row (``SELECT ... FOR UPDATE`` on PostgreSQL; on
   SQLite the transaction already began with ``BEGIN IMMEDIATE``, which serialises writers), copy
   into the sink anything it is missing, chain the new events, bulk-insert them (plus checkpoints
   at multiples of ``checkpoint_every``) and move the head;
3. commit: from here the database is the source of truth;
4. append the new lines to the sink, flush and fsync.

Any failure raises ``AuditUnavailable`` and the caller refuses the action (DESIGN §2.4). A failure in
step 4 happens after the commit: the events are in the database but not yet in the file. We still
refuse the action (the off-box copy is part of the promise), and the sink catches up from the
database on the next successful append; ``export_jsonl`` can also rebuild it at any time.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Callable, Iterable, Sequence

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..control.db import StateDB
from ..errors import AuditUnavailable, StateError
from .body import event_body
from .checkpoints import Checkpoint, CheckpointSigner
from .events import Event, is_valid_type
from .reader import CHECKPOINTS, EVENTS, HEAD, HEAD_ID, READ_CHUNK, AuditReader, _reason, not_chained
from .records import check_records
from .sink import JsonlSink, SinkError, event_line
from .store import insert_events, insert_head_if_missing

__all__ = ["AuditLog", "CheckpointSigner", "Checkpoint"]

log = logging.getLogger("sdm.audit")



# Built once: every append (each audit batch, each unlock) runs both, and building a statement and
# its cache key costs more than SQLite's own work for these one-row reads and writes.
_HEAD_FOR_UPDATE = select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID).with_for_update()
_MOVE_HEAD = update(HEAD).where(HEAD.c.id == HEAD_ID).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))


def _move_head(s: Session, head: tuple[int, str]) -> None:
    s.connection().execute(_MOVE_HEAD, {"new_seq": head[0], "new_hash": head[1]})


def refused(reason: str) -> AuditUnavailable:
    return AuditUnavailable(f"audit log unavailable: {reason}; the action was refused")


class _Refuse(Exception):
    """Internal: a reason to refuse found inside the transaction (rolls it back)."""


@dataclass
class _Batch:
    rows: list[tuple] = field(default_factory=list)  # audit_events rows, columns as in store.ROW
    checkpoints: list[Checkpoint] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # sink lines, in order
    head: tuple[int, str] | None = None  # new head, if it moves


class AuditLog(AuditReader):
    """The hash-chained audit log in the state database, mirrored to an optional JSON-lines sink
    (writing here; reading in ``reader.py``)."""

    def __init__(
        self,
        db: StateDB,
        *,
        jsonl_path: Path | None = None,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
    ):
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.db = db
        self.sink = JsonlSink(jsonl_path) if jsonl_path is not None else None
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self._lock = threading.Lock()
        self._committed_upto = 0  # highest seq this process committed through append_in
        self._sink_upto = 0  # ... and the highest of those known to be in the sink

    # ---- writing -------------------------------------------------------------------------------

    def append(self, event: Event) -> Event:
        """Chain and store one event; returns it with ``seq``, ``prev_hash`` and ``hash`` filled."""
        return self.append_many((event,))[0]

    def append_many(self, events: Iterable[Event], bodies: Sequence[str] | None = None, *,
                    only_new: bool = False) -> list[Event]:
        """Chain and store several events in one transaction (all or none reach the database).

        ``bodies``: each event's canonical body as already serialised with ``prev_hash`` null (the
        gateway's spool has it); the chain then splices the link in rather than serialising again.
        ``only_new``: skip the events the chain already holds (a retry of a batch whose commit may
        have happened after all), checked once the head is locked; those keep ``seq`` None.
        """
        events = list(events)
        if not events:
            return events
        records = _records(events, bodies)
        check_records(records)
        outcome = {"committed": False}

        def build(s: Session, seq: int, prev: str) -> _Batch:
            if not only_new:
                return self._chain(records, seq, prev, events)
            keep = not_chained(s, records)
            return self._chain([records[i] for i in keep], seq, prev, [events[i] for i in keep])

        try:
            self._write(build, outcome)
        except AuditUnavailable:
            if not outcome["committed"]:
                for ev in events:  # nothing was stored: leave no misleading seq/hash behind
                    ev.seq = ev.prev_hash = ev.hash = None
            raise
        return events

    def append_spooled(self, records: Sequence[tuple], *, only_new: bool = False) -> int:
        """Chain events the gateway spooled, as ``(id, ts, type, user, body)`` with the canonical
        body serialised with ``prev_hash`` null (``wire/audit_writer.py``); returns how many.

        All or none reach the database: a failure before the commit raises ``AuditUnavailable``.
        A sink failure after the commit is only logged: the events are chained, so they must not
        be chained again, and the sink catches up from the database on the next write.
        ``only_new``: as in ``append_many`` (the count then leaves out the skipped ones).
        """
        check_records(records)
        outcome = {"committed": False}
        chained = [len(records)]

        def build(s: Session, seq: int, prev: str) -> _Batch:
            todo = records
            if only_new:
                todo = [records[i] for i in not_chained(s, records)]
                chained[0] = len(todo)
            return self._chain(todo, seq, prev)

        try:
            self._write(build, outcome)
        except AuditUnavailable as exc:
            if not outcome["committed"]:
                raise
            log.warning("%s", exc.message)
        return chained[0]

    def append_in(self, s: Session, events: Iterable[Event]) -> list[Event]:
        """Chain and insert events inside the caller's open transaction, so a change and its
        record commit (or roll back) together. The JSON-lines sink is not written here: call
        ``sync_sink()`` after the commit (``StateDB.transaction`` does it through ``after_commit``).
        """
        events = list(events)
        for ev in events:
            if not is_valid_type(ev.type) or len(ev.type) > 64:
                raise refused(f"invalid audit event type {ev.type!r}")
        try:
            seq, prev = self._lock_head(s)
            batch = self._chain(_records(events, None), seq, prev, events)
            insert_events(s, batch.rows)
            if batch.checkpoints:
                s.execute(insert(CHECKPOINTS), [_cp_row(cp) for cp in batch.checkpoints])
            _move_head(s, batch.head)
        except _Refuse as exc:
            raise refused(str(exc)) from None
        except SQLAlchemyError as exc:
            raise refused(_reason(exc)) from exc
        if self.sink is not None:
            s.info.setdefault("after_commit", []).append(lambda: self._mirror_committed(batch))
        return events

    def _mirror_committed(self, batch: _Batch) -> None:
        """After ``append_in``'s commit: append its lines to the sink when the sink ends right
        before them (the usual case: no DB round trip); otherwise catch up from the database."""
        first, last = batch.rows[0][0], batch.head[0]
        with self._lock:
            self._committed_upto = max(self._committed_upto, last)
            try:
                with self.sink.locked() as sink:
                    held = sink.last_seq()
                    if held == first - 1:
                        sink.write_lines(batch.lines, last)
                        held = last
                    if held >= last:
                        self._sink_upto = max(self._sink_upto, last)
                        return
            except (OSError, SinkError, AuditUnavailable):
                pass  # the full catch-up below reports it
        self.sync_sink()
        with self._lock:
            self._sink_upto = max(self._sink_upto, last)

    def sync_sink(self, *, strict: bool = False) -> None:
        """Bring the JSON-lines sink up to the database's head (no-op without a sink).

        Runs after a change and its audit events were committed together, so a failure here
        cannot refuse the change any more; it says that the sink lags and will catch up."""
        if self.sink is None:
            return
        if strict and self._sink_upto >= self._committed_upto:
            return  # everything this process committed through append_in is in the sink already
        try:
            self._write(lambda s, seq, prev: None)
        except AuditUnavailable as exc:
            if strict:
                raise
            reason = exc.message.removeprefix("audit log unavailable: ").removesuffix("; the action was refused")
            raise StateError(
                f"the JSON-lines audit sink lags the state database (the change and its events are "
                f"committed there; the sink catches up on the next write): {reason}"
            ) from None

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head now (idempotent); None while the log is empty."""
        if self.signer is None:
            raise StateError("no audit signing key configured: cannot write a checkpoint")
        result: list[Checkpoint] = []

        def build(s: Session, seq: int, prev: str) -> _Batch | None:
            if seq == 0:
                return None
            row = s.execute(
                select(CHECKPOINTS.c.seq, CHECKPOINTS.c.hash, CHECKPOINTS.c.ts, CHECKPOINTS.c.signature)
                .where(CHECKPOINTS.c.seq == seq)
            ).first()
            if row is not None:
                result.append(Checkpoint(*row))
                return None
            cp = self.signer.checkpoint(seq, prev)
            result.append(cp)
            return _Batch(checkpoints=[cp], lines=[cp.to_line()])

        self._write(build)
        return result[0] if result else None

    def _chain(self, records: Sequence[tuple], seq: int, prev: str, events: Sequence[Event] | None = None) -> _Batch:
        """Link ``records`` ``(id, ts, type, user, body or None)`` after ``(seq, prev)``.

        A body is the canonical body serialised with ``prev_hash`` null (the spool's), and the link
        is spliced in rather than serialising again; with ``events`` (the same events as objects)
        those get their ``seq``, ``prev_hash`` and ``hash``, and a missing body is serialised.
        """
        # The hot loop (GIL held, while the event loop wants it too): per event one splice, one
        # sha256, one row tuple, one sink line. Keep it lean.
        batch = _Batch()
        rows, lines, cps = batch.rows, batch.lines, batch.checkpoints
        every = self.checkpoint_every if self.signer is not None else 0
        prev_raw = bytes.fromhex(prev)  # chain.event_hash, unrolled: hash(n) = sha256(prev || body)
        for i, (id_, ts, type_, user, body) in enumerate(records):
            seq += 1
            ev = None if events is None else events[i]
            if body is not None:
                # Sorted keys put "prev_hash" right after "id"; the event's own random id anchors
                # the splice at the top level (string values cannot hold an unescaped quote, and
                # nested objects never carry that id). Any other shape: serialise anew.
                unlinked, body = body, None
                if ev is None or ev.prev_hash is None:
                    linked = unlinked.replace(f'"id":"{id_}","prev_hash":null', f'"id":"{id_}","prev_hash":"{prev}"', 1)
                    if len(linked) != len(unlinked):
                        body = linked
                if body is None and ev is None:
                    ev = Event.from_dict(json.loads(unlinked))
            if ev is not None:
                ev.prev_hash = prev
                if body is None:
                    body = event_body(ev)
            prev_raw = sha256(prev_raw + body.encode("utf-8")).digest()
            h = prev_raw.hex()
            if events is not None:
                ev.hash, ev.seq = h, seq
            rows.append((seq, id_, ts, type_, user, body, prev, h))
            lines.append(f'{{"seq":{seq},{body[1:-1]},"hash":"{h}"}}')  # sink.event_line, inlined
            if every and seq % every == 0:
                cp = self.signer.checkpoint(seq, h)
                cps.append(cp)
                lines.append(cp.to_line())
            prev = h
        batch.head = (seq, prev)
        return batch

    def _write(self, build: Callable[[Session, int, str], _Batch | None], outcome: dict | None = None) -> None:
        """Run one append under the locks described at the top (``outcome["committed"]`` tells
        a caller whose append failed whether its events nevertheless reached the database)."""
        outcome = {} if outcome is None else outcome
        try:
            with self._lock, (self.sink.locked() if self.sink else nullcontext()) as sink:
                sink_last = sink.last_seq() if sink is not None else None
                with self.db.transaction() as s:
                    seq, prev = self._lock_head(s)
                    if sink is not None:
                        if sink_last > seq:
                            raise _Refuse(
                                f"the JSON-lines sink {self.sink.path} is ahead of the database "
                                f"(seq {sink_last} > head {seq}); it belongs to another state database "
                                "or the database was restored: move it aside"
                            )
                        if sink_last < seq:
                            self._backfill(s, sink, sink_last, seq)
                    batch = build(s, seq, prev)
                    if batch is not None:
                        if batch.rows:
                            insert_events(s, batch.rows)
                        if batch.checkpoints:
                            s.execute(insert(CHECKPOINTS), [_cp_row(cp) for cp in batch.checkpoints])
                        if batch.head is not None:
                            _move_head(s, batch.head)
                outcome["committed"] = batch is not None
                # Committed. The DB is the source of truth; a sink failure below still refuses the
                # action, and the next append (or `export_jsonl`) brings the file up to date.
                if sink is not None and batch is not None and batch.lines:
                    try:
                        sink.write_lines(batch.lines, batch.head[0] if batch.head else seq)
                    except OSError as exc:
                        raise refused(
                            f"cannot write the JSON-lines sink {self.sink.path}: {exc.strerror or exc} "
                            "(the event is in the state database; the sink catches up on the next write)"
                        ) from exc
        except AuditUnavailable:
            raise
        except _Refuse as exc:
            raise refused(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            raise refused(_reason(exc)) from exc

    def _lock_head(self, s: Session) -> tuple[int, str]:
        conn = s.connection()
        row = conn.execute(_HEAD_FOR_UPDATE).first()
        if row is None:
            # First append ever: create the head, unless events exist (then the head was deleted).
            if s.execute(select(EVENTS.c.seq).limit(1)).first() is not None:
                raise _Refuse("the audit head row is missing although events exist (run `sdm audit verify`)")
            insert_head_if_missing(s)
            row = conn.execute(_HEAD_FOR_UPDATE).first()
        return int(row[0]), row[1]

    def _backfill(self, s: Session, sink, after: int, upto: int) -> None:
        """Copy events (after, upto] and their checkpoints from the database into the sink."""
        cps = {
            r[0]: Checkpoint(*r)
            for r in s.execute(
                select(CHECKPOINTS.c.seq, CHECKPOINTS.c.hash, CHECKPOINTS.c.ts, CHECKPOINTS.c.signature)
                .where(CHECKPOINTS.c.seq > after, CHECKPOINTS.c.seq <= upto)
            )
        }
        last = after
        while last < upto:
            rows = s.execute(
                select(EVENTS.c.seq, EVENTS.c.body, EVENTS.c.hash)
                .where(EVENTS.c.seq > last, EVENTS.c.seq <= upto)
                .order_by(EVENTS.c.seq)
                .limit(READ_CHUNK)
            ).all()
            if not rows:
                break
            lines = []
            for seq, body, h in rows:
                lines.append(event_line(seq, body, h))
                if seq in cps:
                    lines.append(cps[seq].to_line())
            last = rows[-1][0]
            sink.write_lines(lines, last)

# ---- helpers -------------------------------------------------------------------------------------


def _records(events: Sequence[Event], bodies: Sequence[str] | None) -> list[tuple]:
    if bodies is None or len(bodies) != len(events):
        return [(ev.id, ev.ts, ev.type, ev.user, None) for ev in events]
    return [(ev.id, ev.ts, ev.type, ev.user, body) for ev, body in zip(events, bodies)]


def _cp_row(cp: Checkpoint) -> dict:
    return {"seq": cp.seq, "hash": cp.hash, "ts": cp.ts, "signature": cp.signature}

