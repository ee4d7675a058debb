"""A real AuditLog on a fresh SQLite state database, for the audit writer and spool tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdm_proxy.audit import AuditLog, CheckpointSigner
from sdm_proxy.control.db import StateDB, make_engine, upgrade


@contextmanager
def sqlite_audit_log(root: Path, *, checkpoint_every: int) -> Iterator[AuditLog]:
    """State in ``root/state.db``, JSON-lines sink ``root/audit.jsonl``, signing key under ``root/keys``."""
    url = f"sqlite:///{root}/state.db"
    upgrade(make_engine(url, create=True))
    db = StateDB(url)
    signer = CheckpointSigner.load_or_create(root / "keys" / "audit-signing.pem")
    try:
        yield AuditLog(db, jsonl_path=root / "audit.jsonl", signer=signer, checkpoint_every=checkpoint_every)
    finally:
        db.dispose()
