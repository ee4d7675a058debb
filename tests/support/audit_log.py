"""A real AuditLog on a fresh SQLite state database, for the audit writer and spool tests."""

from __future__ import annotations

import json
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


def chained_queries(log: AuditLog) -> list[str]:
    """The ``query`` text of every chained event, in chain order."""
    return [e.query for e in log.iter_events()]


def spool_lines(directory: Path) -> list[dict]:
    """Every event line of the spool files in ``directory``, parsed, in file order."""
    return [json.loads(line) for f in sorted(directory.glob("*.spool")) for line in f.read_text().splitlines()]
