"""The hash chain: one definition, used by the writer and by both verifiers.

    body_json  = canonical_json(event without "hash" and without "seq", WITH "prev_hash")
    hash(n)    = SHA-256( bytes.fromhex(prev_hash) || body_json.encode("utf-8") ).hexdigest()
    prev_hash(1) = GENESIS = "0" * 64;  prev_hash(n) = hash(n - 1)

``prev_hash`` is both inside the body and prepended as 32 raw bytes, so editing either breaks the
event's own hash, and any edit, deletion or reordering breaks the link to the next event. ``seq`` is
the event's position (the row key / the line's ``"seq"``); it is not hashed because the links already
fix the order, and verify checks that it runs 1, 2, 3, ... without gaps.

Checkpoints sign the message ``f"{seq}:{hash}"`` (ASCII) with Ed25519; see ``checkpoints.py``.
"""

from __future__ import annotations

from hashlib import sha256

GENESIS = "0" * 64


def event_hash(prev_hash: str, body_json: str) -> str:
    return sha256(bytes.fromhex(prev_hash) + body_json.encode("utf-8")).hexdigest()


def checkpoint_message(seq: int, hash_: str) -> bytes:
    return f"{seq}:{hash_}".encode("ascii")
