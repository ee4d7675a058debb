"""Interleaved pgbench rounds (benchmarks/pgbench.py): medians per path, the ratio as the median of
each round's own ratio, the spread kept, and the table built from them."""

from __future__ import annotations

from benchmarks.pgbench import add_added_latency, merge_rounds
from benchmarks.table import pgbench as pgbench_rows


def _round(direct_ms, pgbouncer_ms, gateway_ms, *, tps=(1000.0, 800.0, 200.0)):
    runs = {
        "direct": {"clients": 1, "tps": tps[0], "latency_ms": direct_ms, "transactions": 10, "failed": 0},
        "pgbouncer": {"clients": 1, "tps": tps[1], "latency_ms": pgbouncer_ms, "transactions": 10, "failed": 0},
        "gateway": {"clients": 1, "tps": tps[2], "latency_ms": gateway_ms, "transactions": 10, "failed": 0},
    }
    add_added_latency(runs)
    return runs


def test_added_latency_is_against_direct_of_the_same_round():
    runs = _round(0.100, 0.120, 0.300)
    assert runs["pgbouncer"]["added_latency_us"] == 20.0
    assert runs["gateway"]["added_latency_us"] == 200.0
    assert "added_latency_us" not in runs["direct"]


def test_one_round_keeps_the_run_as_it_was():
    runs = _round(0.100, 0.120, 0.300)
    merged = merge_rounds([runs])
    assert merged["gateway"] == runs["gateway"]
    assert merged["comparison"]["added_latency_ratio_vs_pgbouncer"] == 10.0
    assert "rounds" not in merged["comparison"]


def test_the_ratio_is_the_median_of_each_rounds_own_ratio():
    # Round 2 is a slow patch for every path: paired within a round, its ratio stays sane.
    rounds = [_round(0.100, 0.120, 0.300), _round(0.300, 0.340, 0.900), _round(0.100, 0.110, 0.250)]
    merged = merge_rounds(rounds)
    per_round = [c["added_latency_ratio_vs_pgbouncer"] for c in merged["comparison"]["rounds"]]
    assert per_round == [10.0, 15.0, 15.0]
    assert merged["comparison"]["added_latency_ratio_vs_pgbouncer"] == 15.0
    gateway = merged["gateway"]
    assert gateway["latency_ms"] == 0.3 and gateway["added_latency_us"] == 200.0  # medians per path
    assert gateway["transactions"] == 30 and gateway["failed"] == 0
    assert [r["latency_ms"] for r in gateway["rounds"]] == [0.3, 0.9, 0.25]
    direct = merged["direct"]
    assert "added_latency_us" not in direct and direct["latency_ms"] == 0.1  # the table's cell tells them apart
    assert all("added_latency_us" not in r for r in direct["rounds"])


def test_a_path_that_failed_in_any_round_reports_that_error():
    bad = _round(0.100, 0.120, 0.300)
    bad["gateway"] = {"clients": 1, "error": "connection refused"}
    merged = merge_rounds([_round(0.100, 0.120, 0.300), bad, _round(0.100, 0.120, 0.300)])
    assert merged["gateway"] == {"clients": 1, "error": "connection refused"}
    # the rounds that did measure still give a ratio
    assert merged["comparison"]["added_latency_ratio_vs_pgbouncer"] == 10.0


def test_the_table_shows_the_median_verdict_and_the_range():
    c1 = merge_rounds([_round(0.100, 0.120, 0.130), _round(0.100, 0.110, 0.110), _round(0.100, 0.120, 0.200)])
    c16 = merge_rounds([_round(0.3, 0.3, 0.3, tps=(900.0, 800.0, 700.0)),
                        _round(0.3, 0.3, 0.3, tps=(900.0, 800.0, 600.0)),
                        _round(0.3, 0.3, 0.3, tps=(900.0, 800.0, 500.0))])
    rows = {r.key: r for r in pgbench_rows({"c1": c1, "c16": c16, "pgbouncer_missing": None})}
    latency, tps = rows["pgbench_c1_latency"], rows["pgbench_c16_tps"]
    assert latency.value == 1.5 and latency.met is True  # rounds 1.5, 1.0 and 5.0: the slow round does not decide
    assert "median of 3 rounds: 1.00×–5.00×" in latency.ratio
    assert tps.value == 0.75 and tps.met is False
    assert "median of 3 rounds: 0.62×–0.88×" in tps.ratio
