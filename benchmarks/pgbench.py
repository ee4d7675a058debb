"""Row 2 of the issue: ``pgbench -S`` (one primary-key SELECT per transaction, simple protocol) at 1
and 16 clients against PostgreSQL direct, PgBouncer in session mode, a bare Python byte forwarder
(``forwarder.py``: the event loop's own cost, for reference) and the gateway, in that order for each
client count. Added latency per query = a path's average latency minus direct's in the same round.

Rounds: on a shared 2-core machine one 10 s run of a path can land in a slow patch (another tenant's
burst), and a ratio of two such runs swings by 2x. So each client count runs ``rounds`` times, every
round all four paths back to back (drift hits each path alike); a path's figures are the medians
over the rounds and each ratio is the median of the rounds' own ratios, with their range kept."""

from __future__ import annotations

import re
import subprocess
from statistics import median

CLIENT_COUNTS = (1, 16)
_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)(?:/(\d+))?")
_FAILED = re.compile(r"number of failed transactions: (\d+)")


def run_pgbench(bench, target: str, clients: int, *, seconds: float | None = None,
                transactions: int | None = None) -> dict:
    """One ``pgbench -n -S -M simple`` run; ``seconds`` (-T) or ``transactions`` per client (-t)."""
    conninfo, password = bench.conninfo(target)
    cmd = [bench.pg_tool("pgbench"), "-n", "-S", "-M", "simple", "-c", str(clients), "-j", str(min(2, clients))]
    cmd += ["-T", str(max(1, round(seconds)))] if transactions is None else ["-t", str(transactions)]
    out = subprocess.run([*cmd, conninfo], env=bench.tool_env(password), capture_output=True, text=True,
                         timeout=1800)
    result: dict = {"clients": clients}
    if out.returncode != 0:
        result["error"] = (out.stderr.strip() or out.stdout.strip())[-400:]
        return result
    return {**result, **parse_output(out.stdout)}


def parse_output(stdout: str) -> dict:
    tps = latency = None
    for line in stdout.splitlines():
        if line.startswith("tps ="):
            tps = float(line.split()[2])
        elif line.startswith("latency average"):
            latency = float(line.split("=")[1].split()[0])
    processed = _PROCESSED.search(stdout)
    failed = _FAILED.search(stdout)
    return {"tps": round(tps, 1) if tps is not None else None, "latency_ms": latency,
            "transactions": int(processed.group(1)) if processed else None,
            "failed": int(failed.group(1)) if failed else 0}


def section(bench, seconds: float, scale: int, rounds: int = 1, progress=None) -> dict:
    bench.pgbench_init(scale)
    port, pgbouncer = bench.pgbouncer()
    targets = ["direct"] + (["pgbouncer"] if port else []) + ["forwarder", "gateway"]
    out: dict = {"mode": "pgbench -n -S -M simple", "seconds_per_run": seconds, "scale": scale, "rounds": rounds,
                 "pgbouncer": pgbouncer if port else None, "pgbouncer_missing": None if port else pgbouncer}
    for clients in CLIENT_COUNTS:
        per_round = []
        for n in range(rounds):
            runs = {target: run_pgbench(bench, target, clients, seconds=seconds) for target in targets}
            bench.gateway.ensure_alive()
            add_added_latency(runs)
            per_round.append(runs)
            if progress is not None and rounds > 1:
                progress(f"pgbench -c{clients}: round {n + 1}/{rounds} done")
        out[f"c{clients}"] = merge_rounds(per_round)
    return out


def add_added_latency(runs: dict) -> None:
    """Each path's average latency minus direct's, in µs (same round)."""
    direct = runs.get("direct", {}).get("latency_ms")
    for target in ("pgbouncer", "forwarder", "gateway"):
        latency = runs.get(target, {}).get("latency_ms")
        if direct is not None and latency is not None:
            runs[target]["added_latency_us"] = round((latency - direct) * 1000, 1)


def merge_rounds(per_round: list[dict]) -> dict:
    """One client count's rounds -> per path the medians (a path that failed in any round keeps that
    round's error), ``comparison`` with each ratio the median of the rounds' ratios, and
    ``comparison["rounds"]`` holding every round's own ratios (their spread)."""
    merged: dict = {}
    for target in per_round[0]:
        results = [runs[target] for runs in per_round]
        failed = next((r for r in results if "error" in r), None)
        merged[target] = failed if failed is not None else _medians(results)
    comparisons = [compare(runs) for runs in per_round]
    summary = {key: _rounded(_median_or_none([c[key] for c in comparisons])) for key in comparisons[0]}
    if len(per_round) > 1:
        summary["rounds"] = comparisons
    merged["comparison"] = summary
    return merged


def _medians(results: list[dict]) -> dict:
    if len(results) == 1:
        return dict(results[0])
    out: dict = {"clients": results[0]["clients"]}
    for key in ("tps", "latency_ms", "added_latency_us"):
        value = _median_or_none([r.get(key) for r in results])
        if value is not None:  # direct has no added latency
            out[key] = round(value, 3)
    out["transactions"] = sum(r.get("transactions") or 0 for r in results)
    out["failed"] = sum(r.get("failed") or 0 for r in results)
    out["rounds"] = [{k: r[k] for k in ("tps", "latency_ms", "added_latency_us") if k in r} for r in results]
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _median_or_none(values: list):
    """The median of the values a round could measure; None when no round could."""
    known = [v for v in values if v is not None]
    return median(known) if known else None


def compare(runs: dict) -> dict:
    """Gateway vs PgBouncer: TPS ratio and added-latency ratio (None when PgBouncer is missing)."""
    gw, pgb = runs.get("gateway", {}), runs.get("pgbouncer", {})
    out = {"tps_ratio_vs_pgbouncer": None, "added_latency_ratio_vs_pgbouncer": None,
           "tps_ratio_vs_direct": None, "forwarder_tps_ratio_vs_pgbouncer": None,
           "forwarder_added_latency_ratio_vs_pgbouncer": None}
    if gw.get("tps") and runs.get("direct", {}).get("tps"):
        out["tps_ratio_vs_direct"] = round(gw["tps"] / runs["direct"]["tps"], 3)
    if gw.get("tps") and pgb.get("tps"):
        out["tps_ratio_vs_pgbouncer"] = round(gw["tps"] / pgb["tps"], 3)
    g_added, p_added = gw.get("added_latency_us"), pgb.get("added_latency_us")
    if g_added is not None and p_added is not None and p_added > 0:
        out["added_latency_ratio_vs_pgbouncer"] = round(g_added / p_added, 2)
    fwd = runs.get("forwarder", {})
    if fwd.get("tps") and pgb.get("tps"):
        out["forwarder_tps_ratio_vs_pgbouncer"] = round(fwd["tps"] / pgb["tps"], 3)
    f_added = fwd.get("added_latency_us")
    if f_added is not None and p_added is not None and p_added > 0:
        out["forwarder_added_latency_ratio_vs_pgbouncer"] = round(f_added / p_added, 2)
    return out
