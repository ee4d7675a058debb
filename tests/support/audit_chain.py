"""A signed, hash-chained audit log of N mixed events, for the verification tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sdm_proxy.audit import (
    AuditLog,
    CheckpointSigner,
    admin_event,
    denied_event,
    query_event,
    session_event,
    unlock_event,
)
from sdm_proxy.control.db import StateDB, make_engine, upgrade

N = 300
EVERY = 50  # checkpoints at 50, 100, ..., 300


def make_events(n: int) -> list:
    out = []
    for i in range(n):
        user = ("alice", "bob", "carol")[i % 3]
        kind = i % 6
        if kind == 0:
            out.append(session_event("start", user=user, session_id=f"s{i}", client={"addr": "127.0.0.1:1"}))
        elif kind == 1:
            out.append(unlock_event(user=user, session_id=f"s{i}", proxy_id="px", datasource="prod", credential="ro"))
        elif kind == 5:
            out.append(admin_event("root", "grant.create", user=user, credential="ro", hours=2))
        elif kind == 4 and i % 4 == 0:
            out.append(denied_event(user=user, reason="no lease on prod/superuser", datasource="prod"))
        else:
            out.append(query_event(user=user, session_id=f"s{i}", proxy_id="px", datasource="prod", credential="ro",
                                   db_user="ro_login", protocol="postgres", query=f"SELECT {i} -- é",
                                   client={"notebook": "n.ipynb", "cell_id": f"c{i}", "execution_count": i}))  # fmt: skip
    return out


@contextlib.contextmanager
def audit_env(tmp_path: Path) -> Iterator[tuple]:
    """A real AuditLog on SQLite with N events (checkpoints every EVERY), appended in batches and
    one by one as a gateway under load would: yields (db, signer, log, tmp_path)."""
    url = f"sqlite:///{tmp_path}/state.db"
    upgrade(make_engine(url, create=True))
    db = StateDB(url)
    signer = CheckpointSigner.load_or_create(tmp_path / "keys" / "audit-signing.pem")
    log = AuditLog(db, jsonl_path=tmp_path / "audit.jsonl", signer=signer, checkpoint_every=EVERY)
    # several batches and single appends, like a gateway under load
    events = make_events(N)
    log.append_many(events[:100])
    for e in events[100:110]:
        log.append(e)
    log.append_many(events[110:])
    try:
        yield db, signer, log, tmp_path
    finally:
        db.dispose()
