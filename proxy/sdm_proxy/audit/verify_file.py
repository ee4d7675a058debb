"""`sdm audit verify --file`: the checks of verify.py on a JSON-lines sink or export.

A checkpoint line must directly follow the event it signs; it is not part of the chain (not hashed,
no seq of its own), so only its signature and its match with that event are checked. Every line
must be byte for byte as the log writes it. A file has no head row: pass ``expect_head``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ..errors import StateError
from .checkpoints import PublicKeyLike, signature_valid
from .events import CHECKPOINT, canonical_json
from .sink import event_line
from .verify import _TWICE_SQL, VerifyReport, _key, _Walk

_CHECKPOINT_KEYS = frozenset({"type", "seq", "hash", "ts", "signature"})


def verify_jsonl(
    path: Path,
    public_key: PublicKeyLike | None = None,
    *,
    expect_head: tuple[int, str] | None = None,
) -> VerifyReport:
    """Verify a JSON-lines sink or export. ``expect_head`` = (seq, hash) the file must end with."""
    key = _key(public_key)
    walk = _Walk()
    checkpoints = 0
    ids = _SeenIds()
    checkpoint_seqs: list[int] = []
    with ids, open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                if not isinstance(doc, dict):
                    raise ValueError
            except ValueError:
                walk.fail(walk.expected, None, f"line {lineno} is not a JSON object (damaged or cut off)")
                break
            if doc.get("type") == CHECKPOINT and set(doc) == _CHECKPOINT_KEYS:
                problem = _check_checkpoint_line(doc, walk, key) or _not_as_written(raw, canonical_json(doc))
                if problem:
                    own = walk.last_id if doc.get("seq") == walk.expected - 1 else None
                    walk.fail(doc.get("seq"), own, f"line {lineno}: {problem}")
                    break
                checkpoints += 1
                checkpoint_seqs.append(doc["seq"])
                continue
            seq, hash_ = doc.pop("seq", None), doc.pop("hash", None)
            if not isinstance(seq, int) or isinstance(seq, bool):
                walk.fail(walk.expected, doc.get("id"), f"line {lineno} has no valid seq")
                break
            try:
                body = canonical_json(doc)
            except ValueError:
                body = ""
            if not walk.step(seq, doc.get("id"), doc.get("prev_hash"), body, hash_):
                bad_seq, bad_id, problem = walk.bad
                walk.fail(bad_seq, bad_id, f"line {lineno}: {problem}")
                break
            problem = _not_as_written(raw, event_line(seq, body, hash_))
            if problem:
                walk.events -= 1
                walk.fail(seq, doc.get("id"), f"line {lineno}: {problem}")
                break
            ids.add(doc.get("id"), seq)
        twice = ids.first_repeat() if walk.bad is None else None
    if twice is not None:
        id_, first, again = twice
        walk.fail(again, id_, f"event {again} repeats event {first} (the same event id {id_}): it was chained twice")
        walk.events = again - 1  # what verified before it, and the checkpoints below it (as verify_db)
        checkpoints = sum(1 for seq in checkpoint_seqs if seq < again)

    if walk.bad is None and expect_head is not None:
        last_seq = walk.expected - 1
        head_seq, head_hash = expect_head
        if head_seq > last_seq:
            gap = f"event {last_seq + 1}" if head_seq == last_seq + 1 else f"events {last_seq + 1}..{head_seq}"
            walk.fail(last_seq + 1, None, f"{gap} missing (expected the file to end at seq {head_seq})")
        elif head_seq < last_seq:
            walk.fail(head_seq + 1, None, f"the file has events after the expected head (seq {head_seq})")
        elif head_hash != walk.prev:
            walk.fail(last_seq, walk.last_id, f"event {last_seq}'s hash differs from the expected head")
    return walk.report(checkpoints)


class _SeenIds:
    """The event ids of a file, kept in a private temporary SQLite database on disk, so that a file
    of any length is checked for an event chained twice in bounded memory (the database version of
    this check is one GROUP BY in the state database)."""

    BATCH = 10_000

    def __enter__(self) -> "_SeenIds":
        self._db = sqlite3.connect("")  # "": a temporary on-disk database, deleted when closed
        self._db.execute("CREATE TABLE ids (id TEXT, seq INTEGER)")
        self._batch: list[tuple[str, int]] = []
        return self

    def __exit__(self, *exc) -> None:
        self._db.close()

    def add(self, id_: object, seq: int) -> None:
        if isinstance(id_, str):
            self._batch.append((id_, seq))
            if len(self._batch) >= self.BATCH:
                self._flush()

    def first_repeat(self) -> tuple[str, int, int] | None:
        """The first event that repeats an earlier one's id: (id, the earlier seq, its seq), or None."""
        self._flush()
        try:
            row = self._db.execute(_TWICE_SQL.format(table="ids")).fetchone()
        except sqlite3.Error as exc:
            raise _temp_failed(exc) from None
        return None if row is None else (row[0], row[1], row[2])

    def _flush(self) -> None:
        if self._batch:
            try:
                self._db.executemany("INSERT INTO ids VALUES (?, ?)", self._batch)
            except sqlite3.Error as exc:
                raise _temp_failed(exc) from None
            self._batch.clear()


def _temp_failed(exc: sqlite3.Error) -> StateError:
    return StateError(f"cannot check the file for events chained twice: its temporary id list failed ({exc}); "
                      "free space in the temporary directory (TMPDIR) and try again")


def _not_as_written(raw: bytes, line: str) -> str | None:
    """The line must be the very bytes the log writes: the same JSON with a duplicate key, other
    spacing or escapes would hash the same once parsed, yet read differently to a person or a grep."""
    if raw.rstrip(b"\r\n") != line.encode("utf-8"):
        return "the line is not as the audit log writes it (rewritten: duplicate keys, spacing or escapes)"
    return None


def _check_checkpoint_line(doc: dict, walk: _Walk, key) -> str | None:
    seq, hash_, sig = doc["seq"], doc["hash"], doc["signature"]
    if seq != walk.expected - 1 or walk.expected == 1:
        return f"checkpoint for seq {seq} does not follow the event it signs"
    if hash_ != walk.prev:
        return f"checkpoint at seq {seq} does not match event {seq}'s hash (the chain was rewritten)"
    if key is not None and not (isinstance(sig, str) and signature_valid(key, seq, hash_, sig)):
        return f"checkpoint at seq {seq} has an invalid signature (forged or altered)"
    return None
