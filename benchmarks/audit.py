"""Row 5 of the issue: how many audited queries per second, and that none were lost.

(a) end to end: ``pgbench -S -c 16 -t N`` through the real gateway; then the gateway is stopped
    gracefully (SIGTERM: it drains, flushes its audit writer and signs a checkpoint), the ``query``
    events for ``pgbench_accounts`` are counted in ``$SDM_HOME/state.db`` (before/after, so events of
    earlier sections do not count), lost = transactions pgbench completed - events recorded, and
    ``sdm audit verify`` must exit 0. The gateway is then started again for later sections.
(b) component capacity: ``python -m benchmarks.audit_rate`` (the audit log alone, many producers)
    in a process of its own, with the gateway's default ``--audit-chainer thread``, and again with
    ``--chainer process`` (the chainer forked before the event loop starts) for reference.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .pgbench import run_pgbench
from .setup import SDM_BIN
from .procs import clean_env

CLIENTS = 16
MARKER = "%FROM pgbench_accounts WHERE aid%"


def count_query_events(home: Path) -> int:
    """``query`` events of pgbench -S statements in the state database (read-only)."""
    db = home / "state.db"
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM audit_events WHERE type = 'query' AND body LIKE ?",
                            (MARKER,)).fetchone()[0]


def verify(home: Path) -> dict:
    out = subprocess.run([str(SDM_BIN), "audit", "verify"], env=clean_env(SDM_HOME=str(home)),
                         capture_output=True, text=True, timeout=600)
    summary = (out.stdout.strip() or out.stderr.strip()).splitlines()
    return {"exit_code": out.returncode, "summary": summary[-1][:300] if summary else ""}


def end_to_end(bench, transactions_per_client: int, scale: int) -> dict:
    bench.pgbench_init(scale)
    gateway = bench.gateway
    gateway.stop()  # everything earlier sections sent is now in the chain
    before = count_query_events(bench.home)
    gateway.start()
    try:
        t0 = time.perf_counter()
        run = run_pgbench(bench, "gateway", CLIENTS, transactions=transactions_per_client)
        wall = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        stop_code = gateway.stop()
        stop_s = time.perf_counter() - t1
    recorded = count_query_events(bench.home) - before
    checked = verify(bench.home)
    gateway.start()
    if "error" in run:
        raise RuntimeError(f"pgbench through the gateway failed: {run['error']}")
    sent = run["transactions"]
    return {
        "clients": CLIENTS, "transactions_per_client": transactions_per_client,
        "expected": CLIENTS * transactions_per_client, "sent": sent, "failed": run.get("failed"),
        "recorded": recorded, "lost": sent - recorded,
        # pgbench's rate excludes its 16 logins; every one of those queries was audited when lost == 0.
        "audited_queries_per_s": run.get("tps"), "wall_s": round(wall, 3),
        "recorded_per_wall_s": round(recorded / wall, 1) if wall else None,
        "gateway_exit_code": stop_code, "graceful_stop_s": round(stop_s, 2),
        "verify": checked, "verified": checked["exit_code"] == 0,
    }


def component(work: Path, events: int, producers: int, chainer: str = "thread") -> dict:
    asked = {"events": events, "producers": producers}
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "benchmarks.audit_rate", str(events), "--producers", str(producers),
                          "--chainer", chainer, "--work", str(work)],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:  # reported, the other sections go on
        return {"error": (run.stderr.strip().splitlines() or ["no output"])[-1][:500], **asked}
    return {**asked, "wall_s": round(time.perf_counter() - t0, 2), **json.loads(run.stdout)}


def section(bench, transactions_per_client: int, scale: int, events: int, producers: int) -> dict:
    return {"end_to_end": end_to_end(bench, transactions_per_client, scale),
            "component": component(bench.work / "audit-rate", events, producers),
            "component_process": component(bench.work / "audit-rate-process", events, producers, "process")}
