"""Audit capacity: how many audited queries per second the gateway's audit path sustains, and that
none are lost.

One audited query is what a listener records for a statement: a ``query`` event written before it
runs (``AuditWriter.write_records``) and its ``query.end`` outcome posted after it
(``AuditWriter.post_records``), both built as a session builds them (``audit/query_records.py``).
``producers`` asyncio tasks (standing in for client sessions) do that as fast as the writer lets
them, through the gateway's own writer (``open_audit_writer``: spool + batched chain into a real
SQLite state database and JSON-lines sink). The clock stops when every event is chained (after
``aclose``); then the chain is counted and verified.

``chainer`` is the gateway's ``--audit-chainer``: ``thread`` (the default) or ``process``, which
forks the audit chainer before the event loop starts, as ``sdm gateway`` does; so run this in a
process of its own (``python -m benchmarks.audit_rate``; ``benchmarks/audit.py`` does).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path


def _session_records(producer: int):
    from sdm_proxy.audit.query_records import QueryRecords

    return QueryRecords(user=f"analyst{producer % 8}", session_id=f"s{producer}", proxy_id="bench",
                        datasource="bench", credential="read-only", db_user="ro", protocol="postgres")


async def _produce(writer, producer: int, count: int) -> None:
    records = _session_records(producer)  # as a listener's session builds its records
    client = {"addr": f"127.0.0.1:{40000 + producer}"}
    for n in range(count):
        started = records.start(f"SELECT abalance FROM pgbench_accounts WHERE aid = {n};", client)
        await writer.write_records([started.record])
        writer.post_records([started.end(duration_ms=0.05, rows=1, status="ok", error=None)])
        if n % 64 == 63:
            await asyncio.sleep(0)  # let the other sessions (and the writer) run, as sockets would


def measure(work_dir: Path, events: int = 200_000, producers: int = 64, sync: str = "write",
            chainer: str = "thread") -> dict:
    """Returns queries_per_s (audited queries per second; events_per_s counts both events of each),
    lost, verified and the raw counts."""
    from sdm_proxy.audit.verify import verify_db
    from sdm_proxy.gateway import GatewayConfig, open_audit_writer, start_chainer, tune_interpreter

    from tests.support.gateway_state import GatewayState

    state = GatewayState.create(Path(work_dir) / "audit-home")
    cp = state.cp
    per = max(1, events // producers)
    sent = per * producers

    tune_interpreter()  # as `sdm gateway` does before its event loop starts
    forked = start_chainer(cp, GatewayConfig(audit_sync=sync, audit_chainer=chainer))

    async def run() -> float:
        writer = open_audit_writer(cp, sync, forked)
        t0 = time.perf_counter()
        await asyncio.gather(*(_produce(writer, p, per) for p in range(producers)))
        await writer.aclose()
        return time.perf_counter() - t0

    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:
        elapsed = uvloop.run(run()) if uvloop else asyncio.run(run())
    finally:
        if forked is not None:
            forked.close()
    db_path = cp.home.root / "state.db"
    with sqlite3.connect(db_path) as conn:
        counts = dict(conn.execute("SELECT type, count(*) FROM audit_events WHERE type IN ('query', 'query.end') "
                                   "GROUP BY type").fetchall())
    report = verify_db(cp.db, cp.audit.signer.public_key if cp.audit.signer else None)
    state.close()
    recorded = counts.get("query", 0)
    return {
        "sync": sync, "chainer": "process" if forked is not None else "thread", "producers": producers,
        "queries_sent": sent, "queries_recorded": recorded,
        "query_end_recorded": counts.get("query.end", 0), "lost": sent - recorded + (sent - counts.get("query.end", 0)),
        "seconds": round(elapsed, 3), "queries_per_s": round(sent / elapsed),
        "events_per_s": round(2 * sent / elapsed), "verified": bool(report.ok),
    }


if __name__ == "__main__":
    import argparse
    import json
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("events", type=int, nargs="?", default=100_000)
    p.add_argument("--producers", type=int, default=64)
    p.add_argument("--chainer", choices=("thread", "process"), default="thread")
    p.add_argument("--work", type=Path, help="directory for the state (default: a temporary one)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        print(json.dumps(measure(Path(tmp), a.events, a.producers, chainer=a.chainer), indent=2))
