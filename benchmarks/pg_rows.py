"""Rows 1 and 3 of the issue: a bulk SELECT via psycopg, and connect + first query (SCRAM upstream),
each direct to PostgreSQL vs through the gateway, interleaved so drift hits both sides alike."""

from __future__ import annotations

import time

import psycopg

from .measure import median, side_by_side, timed
from .procs import reset_peak, rss_kb

# Four columns of the common kinds: integer, text, float8, timestamp (text protocol, as psycopg uses).
BULK_SQL = ("SELECT g AS id, g::text AS name, (g * 1.5)::float8 AS amount, "
            "timestamp '2024-01-01' + g * interval '1 second' AS ts FROM generate_series(1, {rows}) g")
COLUMNS = 4
SAMPLE_GAP = 0.05  # seconds between connect samples


def bulk_sql(rows: int) -> str:
    return BULK_SQL.format(rows=int(rows))


def wire_bytes(kw: dict, rows: int) -> int:
    """Bytes of the result's DataRow messages (type, length, column count, then length + text per
    column): what crosses the wire either way, the basis of MB/s."""
    sql = (f"SELECT sum(octet_length(id::text) + octet_length(name) + octet_length(amount::text) "
           f"+ octet_length(ts::text)) FROM ({bulk_sql(rows)}) s")
    with psycopg.connect(**kw) as conn:
        payload = conn.execute(sql).fetchone()[0] or 0
    return int(payload) + rows * (1 + 4 + 2 + 4 * COLUMNS)


def bulk(bench, rows: int, repeat: int) -> dict:
    sql = bulk_sql(rows)

    def fetch(kw):
        with psycopg.connect(**kw) as conn:
            got = len(conn.execute(sql).fetchall())
        if got != rows:
            raise AssertionError(f"expected {rows} rows, got {got}")

    direct_kw, gw_kw = bench.direct_kw(), bench.gateway_kw()
    size = wire_bytes(direct_kw, rows)
    fetch(direct_kw), fetch(gw_kw)  # warm up both paths before the peak is reset
    reset_peak(bench.gateway.pid)
    res = side_by_side(lambda: fetch(direct_kw), lambda: fetch(gw_kw), repeat, bench.gateway.pid, warm_up=False)
    bench.gateway.ensure_alive()
    d, g = res["direct_s"], res["gateway_s"]
    return {
        "rows": rows, "columns": COLUMNS, "client": "psycopg fetchall", "wire_mb": round(size / 1e6, 2),
        "repeat": repeat, **res,
        "direct_rows_per_s": round(rows / d), "gateway_rows_per_s": round(rows / g),
        "direct_mb_per_s": round(size / 1e6 / d, 1), "gateway_mb_per_s": round(size / 1e6 / g, 1),
        "throughput_ratio": round(d / g, 3),
        "gateway_peak_rss_kb": rss_kb(bench.gateway.pid).get("VmHWM"),
    }


def connect(bench, n: int) -> dict:
    def first_query(kw):
        with psycopg.connect(**kw) as conn:
            conn.execute("SELECT 1").fetchone()

    direct_kw, gw_kw = bench.direct_kw(), bench.gateway_kw()
    first_query(direct_kw), first_query(gw_kw)
    d, g = [], []
    for _ in range(n):  # interleaved, and spaced so that one side's background work (a backend
        # exiting, the gateway's next warm spare logging in) does not land in the other's sample
        d += timed(lambda: first_query(direct_kw))
        time.sleep(SAMPLE_GAP)
        g += timed(lambda: first_query(gw_kw))
        time.sleep(SAMPLE_GAP)
    bench.gateway.ensure_alive()
    return {
        "samples": n, "auth_upstream": "scram-sha-256",
        "direct_ms": round(median(d) * 1000, 2), "gateway_ms": round(median(g) * 1000, 2),
        "direct_min_ms": round(min(d) * 1000, 2), "gateway_min_ms": round(min(g) * 1000, 2),
        "time_ratio": round(median(g) / median(d), 3),
    }
