"""`sdm audit verify`: walk the chain and name the first event that does not hold up.

Checks, in seq order (the first failure wins and the walk stops there):

* seq runs 1, 2, 3, ... A gap means deleted events: the event right after the gap is reported as
  the first bad one, with the problem "event N missing".
* each event's ``prev_hash`` is the previous event's ``hash`` (``GENESIS`` for seq 1): catches
  deletions with renumbering and reordered (swapped) events;
* the hash recomputed from the stored body matches (catches any edited field, or an edited hash);
* (database) the body is canonical JSON whose ``prev_hash``, ``id``, ``ts``, ``type`` and ``user`` equal
  the indexed columns (an edited column cannot hide an event from ``tail --user``);
* (database) the head row names the last event: a deleted *last* event leaves no gap behind, it is
  caught here ("event N missing", first bad seq N);
* every checkpoint's Ed25519 signature over ``"{seq}:{hash}"`` is valid and its hash equals the
  event's hash at that seq (catches a chain rewritten from some point on with recomputed hashes).

JSON-lines files are checked the same way. A checkpoint line must directly follow the event it
signs; it is not part of the chain (not hashed, no seq of its own), so only its signature and its
match with that event are checked. A file has no head row, so cutting events off its end is only
visible against an anchor: pass ``expect_head=(seq, hash)`` (e.g. ``AuditLog.head()``) or rely on a
checkpoint line that now refers to a missing event.

Limits (by design of any hash chain): someone holding the signing key and write access can rewrite
everything; without the key, a rewrite after the newest checkpoint, or deleting trailing events and
moving the head back, is only caught by comparing with an off-box copy (the sink) or, for deleted
checkpoint rows, with ``expect_checkpoint_every``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text

from ..control.db import StateDB
from ..control.models import AuditCheckpoint, AuditEvent, AuditHead
from .chain import GENESIS, event_hash
from .checkpoints import PublicKeyLike, load_public_key, signature_valid
from .events import canonical_json

EVENTS = AuditEvent.__table__
HEAD = AuditHead.__table__
CHECKPOINTS = AuditCheckpoint.__table__
CHUNK = 2000


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    events: int  # events that verified (up to, not including, the first bad one)
    checkpoints: int  # checkpoints whose signature and hash verified
    first_bad_seq: int | None = None
    first_bad_id: str | None = None
    problem: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"audit log OK: {self.events} events, {self.checkpoints} signed checkpoints verified"
        where = f"first bad event: seq {self.first_bad_seq}" if self.first_bad_seq is not None else "no event"
        if self.first_bad_id:
            where += f", id {self.first_bad_id}"
        return f"audit log FAILED verification: {self.problem} ({where}; {self.events} events verified before it)"


class _Walk:
    """The chain state shared by both verifiers."""

    def __init__(self) -> None:
        self.expected = 1
        self.prev = GENESIS
        self.last_id: str | None = None
        self.events = 0
        self.bad: tuple[int | None, str | None, str] | None = None
        self.bad_from: int | None = None  # lowest seq the problem touches (a gap starts before `bad`)

    def fail(self, seq: int | None, id_: str | None, problem: str, *, from_seq: int | None = None) -> None:
        self.bad = (seq, id_, problem)
        self.bad_from = from_seq if from_seq is not None else seq

    def step(self, seq: int, id_: str | None, prev_hash: Any, body: str, hash_: Any) -> bool:
        """Check one event's place and hash; False (and ``bad`` set) on the first problem."""
        if seq != self.expected:
            if seq > self.expected:
                gap = f"event {self.expected}" if seq == self.expected + 1 else f"events {self.expected}..{seq - 1}"
                self.fail(seq, id_, f"{gap} missing", from_seq=self.expected)
            else:
                self.fail(seq, id_, f"event {seq} is out of order or duplicated (expected {self.expected})")
            return False
        if prev_hash != self.prev:
            self.fail(seq, id_, f"event {seq}'s prev_hash is not the hash of the event before it "
                                "(edited, deleted or reordered events)")  # fmt: skip
            return False
        try:
            ok = isinstance(hash_, str) and event_hash(prev_hash, body) == hash_
        except (ValueError, TypeError):
            ok = False
        if not ok:
            self.fail(seq, id_, f"event {seq}'s hash does not match its content (edited event or hash)")
            return False
        self.expected, self.prev, self.last_id = seq + 1, hash_, id_
        self.events += 1
        return True

    def report(self, checkpoints: int) -> VerifyReport:
        if self.bad is None:
            return VerifyReport(True, self.events, checkpoints)
        seq, id_, problem = self.bad
        return VerifyReport(False, self.events, checkpoints, seq, id_, problem)


def _key(public_key: PublicKeyLike | None):
    return None if public_key is None else load_public_key(public_key)


# ---- database ------------------------------------------------------------------------------------


def verify_db(
    db: StateDB, public_key: PublicKeyLike | None, *, expect_checkpoint_every: int | None = None
) -> VerifyReport:
    """Verify the chain in the state database. With ``public_key`` None signatures are not checked.

    ``expect_checkpoint_every``: also require a checkpoint at every multiple of it up to the head
    (catches deleted checkpoint rows when the interval is known).
    """
    key = _key(public_key)
    walk = _Walk()
    cols = (EVENTS.c.seq, EVENTS.c.id, EVENTS.c.ts, EVENTS.c.type, EVENTS.c.user,
            EVENTS.c.body, EVENTS.c.prev_hash, EVENTS.c.hash)  # fmt: skip
    head = None
    last = 0
    while walk.bad is None:
        # Short transactions (a long one would hold SQLite's write lock and stall the gateway).
        # The head is locked FOR SHARE first, so in the final chunk head and rows agree even while
        # the gateway appends (on PostgreSQL; SQLite transactions are serialised anyway).
        with db.transaction() as s:
            head = s.execute(
                select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1).with_for_update(read=True)
            ).first()
            rows = s.execute(select(*cols).where(EVENTS.c.seq > last).order_by(EVENTS.c.seq).limit(CHUNK)).all()
        for seq, id_, ts, type_, user, body, prev_hash, hash_ in rows:
            if not walk.step(seq, id_, prev_hash, body, hash_):
                break
            problem = _body_matches_columns(body, prev_hash, id_, ts, type_, user)
            if problem:
                walk.events -= 1
                walk.fail(seq, id_, f"event {seq}: {problem}")
                break
        if len(rows) < CHUNK:
            break
        last = rows[-1][0]

    if walk.bad is None:
        last_seq = walk.expected - 1
        if head is None:
            if last_seq:
                walk.fail(None, None, "the audit head row is missing")
        elif head[0] > last_seq:
            gap = f"event {last_seq + 1}" if head[0] == last_seq + 1 else f"events {last_seq + 1}..{head[0]}"
            walk.fail(last_seq + 1, None, f"{gap} missing (the head is at seq {head[0]}, the last event is {last_seq})")
        elif head[0] < last_seq:
            walk.fail(head[0] + 1, None, f"events after the head (seq {head[0]}) were added outside the audit log")
        elif head[1] != walk.prev:
            walk.fail(last_seq, walk.last_id, f"the head's hash does not match event {last_seq}")

    if walk.bad is None:
        outside = _rows_below_the_chain(db)
        if outside:
            # The walk starts at seq 1; a row stored at seq 0 or below is in no chain, yet readers
            # (activity, tail) would show it as an event.
            walk.fail(None, None, f"{outside} event row(s) stored at seq 0 or below, outside the chain: written "
                                  "into the state database, not through the audit log")

    if walk.bad is None:
        twice = _event_chained_twice(db)
        if twice is not None:
            id_, first, again = twice
            walk.fail(again, id_, f"event {again} repeats event {first} (the same event id {id_}): it was "
                                  "chained twice")
            walk.events = again - 1  # what verified before it

    verified, cp_bad = _verify_db_checkpoints(db, key, walk, expect_checkpoint_every, head)
    if cp_bad is not None and (walk.bad is None or walk.bad_from is None or cp_bad[0] < walk.bad_from):
        walk.bad = cp_bad
    return walk.report(verified)


def _rows_below_the_chain(db: StateDB) -> int:
    with db.transaction() as s:
        return int(s.execute(select(func.count()).select_from(EVENTS).where(EVENTS.c.seq < 1)).scalar() or 0)


def _event_chained_twice(db: StateDB) -> tuple[str, int, int] | None:
    """The first event id held by two rows, with its first and last seq; None if ids are unique.

    The hashes cannot show this: a record chained twice (a spool recovered while its gateway still
    ran, say) links correctly both times. ``id`` has no index (docs/audit.md), so this is one
    grouping pass over the table, in the database. On SQLite it runs as a plain read outside
    ``transaction()`` (which takes the write lock): with WAL the gateway keeps chaining meanwhile."""
    if db.url.startswith("sqlite"):
        raw = db.engine.raw_connection()  # autocommit (we issue BEGIN ourselves): a read snapshot only
        try:
            row = raw.driver_connection.execute(_TWICE_SQL.format(table="audit_events")).fetchone()
        finally:
            raw.close()
    else:
        with db.transaction() as s:
            row = s.execute(text(_TWICE_SQL.format(table="audit_events"))).first()
    return None if row is None else (row[0], row[1], row[2])


# The first event (lowest seq) whose id an earlier event holds, with that earlier event's seq.
_TWICE_SQL = ("SELECT id, first_seq, seq FROM (SELECT id, seq, min(seq) OVER (PARTITION BY id) AS first_seq, "
              "row_number() OVER (PARTITION BY id ORDER BY seq) AS n FROM {table}) AS t "
              "WHERE n = 2 ORDER BY seq LIMIT 1")


def _body_matches_columns(body: str, prev_hash: str, id_, ts, type_, user) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if not isinstance(doc, dict) or canonical_json(doc) != body:
        return "body is not canonical JSON"
    if doc.get("prev_hash") != prev_hash:
        return "prev_hash column differs from the hashed body"
    for name, value in (("id", id_), ("ts", ts), ("type", type_), ("user", user)):
        if doc.get(name) != value:
            return f"{name} column differs from the hashed body"
    return None


def _verify_db_checkpoints(db: StateDB, key, walk: _Walk, every: int | None, head):
    """Check checkpoints below the first chain problem; returns (verified, first problem or None)."""
    limit = walk.bad_from if walk.bad is not None else None
    with db.transaction() as s:
        q = (
            select(CHECKPOINTS.c.seq, CHECKPOINTS.c.hash, CHECKPOINTS.c.signature, EVENTS.c.hash, EVENTS.c.id)
            .select_from(CHECKPOINTS.outerjoin(EVENTS, EVENTS.c.seq == CHECKPOINTS.c.seq))
            .order_by(CHECKPOINTS.c.seq)
        )
        if limit is not None:
            q = q.where(CHECKPOINTS.c.seq < limit)
        cps = s.execute(q).all()
    verified = 0
    seen = set()
    for seq, cp_hash, sig, ev_hash, ev_id in cps:
        if ev_hash is None:
            return verified, (seq, None, f"checkpoint at seq {seq} refers to an event that does not exist")
        if cp_hash != ev_hash:
            return verified, (seq, ev_id, f"checkpoint at seq {seq} does not match event {seq}'s hash "
                                          "(the chain was rewritten from there on)")  # fmt: skip
        if key is not None and not signature_valid(key, seq, cp_hash, sig):
            return verified, (seq, ev_id, f"checkpoint at seq {seq} has an invalid signature (forged or altered)")
        verified += 1
        seen.add(seq)
    if every:
        top = limit - 1 if limit is not None else (head[0] if head else 0)
        for seq in range(every, top + 1, every):
            if seq not in seen:
                return verified, (seq, None, f"checkpoint at seq {seq} is missing")
    return verified, None


# JSON-lines files: verify_file.py (re-exported here, where callers have always found it).
from .verify_file import verify_jsonl  # noqa: E402,F401
