"""Tamper-evident audit: event model, hash chain, signed checkpoints, JSON-lines sink, verify.

Every unlock and every query is written here *before* it happens; if the write fails the caller
gets ``AuditUnavailable`` and refuses the action (DESIGN §2.4).
"""

from .chain import GENESIS, event_hash
from .checkpoints import Checkpoint, CheckpointSigner, load_public_key
from .events import (
    ACCESS_DENIED,
    CHECKPOINT,
    CREDENTIAL_UNLOCK,
    QUERY,
    QUERY_END,
    SESSION_END,
    SESSION_START,
    Client,
    Event,
    admin_event,
    canonical_json,
    denied_event,
    event_schema,
    query_end_event,
    query_event,
    session_event,
    unlock_event,
)
from .log import AuditLog
from .verify import VerifyReport, verify_db, verify_jsonl

__all__ = [
    "ACCESS_DENIED", "CHECKPOINT", "CREDENTIAL_UNLOCK", "QUERY", "QUERY_END", "SESSION_END",
    "SESSION_START", "GENESIS", "AuditLog", "Checkpoint", "CheckpointSigner", "Client", "Event",
    "VerifyReport", "admin_event", "canonical_json", "denied_event", "event_hash", "event_schema",
    "load_public_key", "query_end_event", "query_event", "session_event", "unlock_event",
    "verify_db", "verify_jsonl",
]  # fmt: skip
