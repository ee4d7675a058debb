"""Row 6 of the issue: the gateway's memory, read from /proc/<pid>/status of the ``sdm gateway``
process itself (VmRSS now, VmHWM the peak since the last reset through ``clear_refs``).

The gateway is restarted first, so the figures do not depend on which sections ran before. Then:
- idle: RSS of the fresh gateway with no session;
- streaming: peak RSS while a psycopg client streams N rows row by row (a consumer slower than the
  database, so the gateway must apply backpressure rather than buffer the result);
- idle sessions: M psycopg connections opened through the gateway and held for a second; the peak
  RSS while opening and holding them, and the RSS at the end.

The gateway forks an audit chainer (``--audit-chainer process``). What it adds is its private
memory (USS: the pages it shares with the gateway are already in the gateway's RSS), read after
each phase; the figure against the bar is the gateway's peak RSS plus that ("total").
"""

from __future__ import annotations

import time

import psycopg

from .pg_rows import bulk_sql
from .procs import children, mb, private_kb, reset_peak, rss_kb

LIMIT_MB = 100


def section(bench, rows: int, idle_sessions: int) -> dict:
    gateway = bench.gateway
    before = rss_kb(gateway.pid)
    gateway.restart()
    gw_kw = bench.gateway_kw()
    with psycopg.connect(**gw_kw) as conn:  # warm: imports, the unlock path, SCRAM keys
        conn.execute("SELECT 1").fetchone()
    time.sleep(0.5)
    idle = rss_kb(gateway.pid)
    idle_chainer = _chainer_private_kb(gateway.pid)

    peak_reset = reset_peak(gateway.pid)
    t0 = time.perf_counter()
    streamed = 0
    with psycopg.connect(**gw_kw) as conn, conn.cursor() as cur:
        for _row in cur.stream(bulk_sql(rows)):
            streamed += 1
    stream_s = time.perf_counter() - t0
    if streamed != rows:
        raise AssertionError(f"streamed {streamed} rows, expected {rows}")
    streaming = rss_kb(gateway.pid)
    streaming_chainer = _chainer_private_kb(gateway.pid)

    reset_peak(gateway.pid)
    conns = []
    try:
        for _ in range(idle_sessions):
            conns.append(psycopg.connect(**gw_kw))
        time.sleep(1.0)
        held = rss_kb(gateway.pid)
        held_chainer = _chainer_private_kb(gateway.pid)
        alive = sum(1 for c in conns if c.execute("SELECT 1").fetchone() == (1,))
    finally:
        for c in conns:
            c.close()
    gateway.ensure_alive()
    return {
        "gateway_pid": gateway.pid, "gateway": gateway.describe(), "peak_reset_supported": peak_reset,
        "limit_mb": LIMIT_MB,
        "before_restart_rss_mb": mb(before.get("VmRSS")), "before_restart_peak_mb": mb(before.get("VmHWM")),
        "idle_rss_mb": mb(idle.get("VmRSS")), "idle_chainer_private_mb": mb(idle_chainer),
        "streaming": {"rows": rows, "client": "psycopg cursor.stream (row by row)", "seconds": round(stream_s, 2),
                      "peak_rss_mb": mb(streaming.get("VmHWM")), "rss_after_mb": mb(streaming.get("VmRSS")),
                      **_total(streaming.get("VmHWM"), streaming_chainer)},
        "idle_sessions": {"sessions": len(conns), "answered_after_hold": alive, "hold_s": 1.0,
                          "rss_mb": mb(held.get("VmRSS")), "peak_rss_mb": mb(held.get("VmHWM")),
                          **_total(held.get("VmHWM"), held_chainer)},
    }


def _chainer_private_kb(gateway_pid: int) -> int | None:
    """Private memory of the gateway's child processes (its audit chainer), or None without one."""
    kids = children(gateway_pid)
    return sum(private_kb(pid) for pid in kids) if kids else None


def _total(peak_kb: int | None, chainer_kb: int | None) -> dict:
    return {"chainer_private_mb": mb(chainer_kb),
            "total_peak_mb": mb(None if peak_kb is None else peak_kb + (chainer_kb or 0))}
