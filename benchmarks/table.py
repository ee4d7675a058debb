"""The results table: one row per figure of the issue, each with its bar and whether it was met.

``rows_for(section, result)`` turns one section's result into rows. A row keeps its raw figures
(``value`` against ``threshold`` in direction ``better``) for the chart, and formatted cells for
the Markdown table. ``met`` is True, False, or None (not measured / nothing to compare with).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DASH = "—"


@dataclass
class Row:
    key: str
    label: str
    direct: str = DASH
    gateway: str = DASH
    other: str = DASH  # PgBouncer or JupySQL
    ratio: str = DASH
    bar: str = DASH
    met: bool | None = None
    value: float | None = None  # what the chart plots, on the bar's scale
    threshold: float | None = None
    better: str | None = None  # "higher" | "lower"
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _n(x, digits: int = 0) -> str:
    return DASH if x is None else f"{x:,.{digits}f}"


def _us(x) -> str:
    return _n(x, 0 if x is not None and abs(x) >= 100 else 1)


def _x(ratio, threshold: float | None = None) -> str:
    """``0.93×``; three decimals when two would look like the bar itself (0.898 is not 0.90)."""
    if ratio is None:
        return DASH
    digits = 3 if threshold is not None and round(ratio, 2) == round(threshold, 2) and ratio != threshold else 2
    return f"{ratio:.{digits}f}×"


def _of_bar(fraction) -> str:
    return DASH if fraction is None else f"{fraction:.2f} of the bar"


def _error_row(key: str, label: str, result: dict) -> Row:
    return Row(key, label, gateway=f"error: {str(result.get('error'))[:80]}", note=str(result.get("error")))


def bulk(r: dict) -> list[Row]:
    label = f"bulk: {r.get('rows', 0):,}-row SELECT via psycopg"
    if "error" in r:
        return [_error_row("bulk", label, r)]
    ratio = r["throughput_ratio"]
    return [Row("bulk", label, direct=f"{_n(r['direct_rows_per_s'])} rows/s, {r['direct_mb_per_s']} MB/s",
                gateway=f"{_n(r['gateway_rows_per_s'])} rows/s, {r['gateway_mb_per_s']} MB/s",
                ratio=_x(ratio, 0.90), bar="≥ 0.90× direct", met=ratio >= 0.90, value=ratio, threshold=0.90, better="higher")]


def pgbench(r: dict) -> list[Row]:
    if "error" in r:
        return [_error_row("pgbench", "pgbench -S", r)]
    missing = r.get("pgbouncer_missing")
    rows = []
    c1, c16 = r.get("c1", {}), r.get("c16", {})

    def cell(run: dict, first: str) -> str:
        if not run:
            return f"n/a ({missing})" if missing else DASH
        if "error" in run:
            return f"error: {run['error'][:60]}"
        added = f"+{_us(run.get('added_latency_us'))} µs/query" if "added_latency_us" in run else \
            f"{_us((run.get('latency_ms') or 0) * 1000)} µs/query"
        tps = f"{_n(run.get('tps'))} TPS"
        return f"{added}, {tps}" if first == "latency" else f"{tps}, {added}"

    g, p = c1.get("gateway", {}), c1.get("pgbouncer", {})
    g_add, p_add = g.get("added_latency_us"), p.get("added_latency_us")
    ratio = c1.get("comparison", {}).get("added_latency_ratio_vs_pgbouncer")
    if ratio is not None:
        met = ratio <= 2.0
    else:  # PgBouncer added nothing measurable (or was missing): compare the figures themselves
        met = None if g_add is None or p_add is None else g_add <= 2 * p_add
    rows.append(Row("pgbench_c1_latency", "pgbench -S, 1 client: added latency per query",
                    direct=cell(c1.get("direct", {}), "latency"), gateway=cell(g, "latency"),
                    other=cell(p, "latency"),
                    ratio=_ratio_cell(c1, "added_latency_ratio_vs_pgbouncer", 2.0),
                    bar="≤ 2× PgBouncer's", met=met, value=ratio, threshold=2.0, better="lower"))
    ratio = c16.get("comparison", {}).get("tps_ratio_vs_pgbouncer")
    rows.append(Row("pgbench_c16_tps", "pgbench -S, 16 clients: TPS",
                    direct=cell(c16.get("direct", {}), "tps"), gateway=cell(c16.get("gateway", {}), "tps"),
                    other=cell(c16.get("pgbouncer", {}), "tps"),
                    ratio=_ratio_cell(c16, "tps_ratio_vs_pgbouncer", 0.8), bar="≥ 0.8× PgBouncer's",
                    met=None if ratio is None else ratio >= 0.8, value=ratio, threshold=0.8, better="higher"))
    f1, f16 = c1.get("forwarder", {}), c16.get("forwarder", {})
    if f1 or f16:  # reference only: what the event loop alone costs, no bar
        r1 = c1.get("comparison", {}).get("forwarder_added_latency_ratio_vs_pgbouncer")
        r16 = c16.get("comparison", {}).get("forwarder_tps_ratio_vs_pgbouncer")
        rows.append(Row("pgbench_forwarder", "pgbench -S through a bare Python forwarder (reference, not the product)",
                        gateway=f"1 client: {cell(f1, 'latency')}; 16 clients: {cell(f16, 'tps')}",
                        ratio=f"{_x(r1)} PgBouncer's latency; {_x(r16)} its TPS", bar="none (reference)"))
    return rows


def _ratio_cell(clients: dict, key: str, bar: float) -> str:
    """The median ratio, and with several rounds the range of the rounds' own ratios."""
    comparison = clients.get("comparison", {})
    ratio = comparison.get(key)
    if ratio is None:
        return _x(ratio, bar)
    text = _x(ratio, bar) + " PgBouncer's"
    spread = [c[key] for c in comparison.get("rounds", []) if c.get(key) is not None]
    if len(spread) > 1:
        text += f" (median of {len(spread)} rounds: {_x(min(spread), bar)}–{_x(max(spread), bar)})"
    return text


def connect(r: dict) -> list[Row]:
    label = "connect + first query (SCRAM upstream)"
    if "error" in r:
        return [_error_row("connect", label, r)]
    ratio = r["time_ratio"]
    return [Row("connect", label, direct=f"{r['direct_ms']} ms", gateway=f"{r['gateway_ms']} ms", ratio=_x(ratio, 1.0),
                bar="≤ 1.0× direct", met=ratio <= 1.0, value=ratio, threshold=1.0, better="lower")]


def notebook(r: dict) -> list[Row]:
    label = f"{r.get('rows', 0):,} rows into a DataFrame: %sdm sql vs JupySQL %sql"
    if "error" in r:
        return [_error_row("notebook", label, r)]
    checks = r.get("checks", {})
    ratio = r.get("time_ratio_vs_jupysql")
    note = "" if checks.get("ok") else "results differ between methods (see checks in the JSON)"
    if checks.get("ok") and not checks.get("dtypes_identical"):
        note = "dtypes differ between methods (see checks in the JSON)"
    met = None if ratio is None else (ratio < 1.0 and bool(checks.get("ok")))
    return [Row("notebook", label, direct=f"read_sql {r['read_sql_s']} s", gateway=f"%sdm sql {r['sdm_sql_s']} s",
                other=f"JupySQL {r['jupysql_s']} s" if "jupysql_s" in r else f"n/a ({r.get('jupysql_missing')})",
                ratio=_x(ratio, 1.0) + (" JupySQL's" if ratio is not None else ""), bar="< 1.0× JupySQL's (faster)",
                met=met, value=ratio, threshold=1.0, better="lower", note=note)]


def audit(r: dict) -> list[Row]:
    if "error" in r:
        return [_error_row("audit", "audit", r)]
    rows = []
    c = r.get("component", {})
    label = f"audit log capacity ({c.get('producers', '?')} producers, {_n(c.get('events'))} queries)"
    if "error" in c:
        rows.append(Row("audit_capacity", label, gateway=f"n/a: {c['error'][:70]}", bar="≥ 20,000/s, 0 lost",
                        note=c["error"]))
    else:
        eps, lost = c.get("queries_per_s", c.get("events_per_s")), c.get("lost")
        met = eps is not None and eps >= 20_000 and lost == 0 and c.get("verified") is not False
        rows.append(Row("audit_capacity", label,
                        gateway=f"{_n(eps)} audited queries/s ({_n(c.get('events_per_s'))} events/s: query + "
                                f"query.end), {lost} lost, verified {c.get('verified')}",
                        bar="≥ 20,000/s, 0 lost", met=met, value=None if eps is None else eps / 20_000,
                        threshold=1.0, better="higher", ratio=_of_bar(None if eps is None else eps / 20_000)))
    t = r.get("component_process", {})
    if t and "error" not in t:  # reference: the same run with the chainer in a process of its own
        rows.append(Row("audit_capacity_process", "audit log capacity, chainer in its own process "
                        "(--audit-chainer process; reference)", gateway=f"{_n(t.get('queries_per_s'))} audited "
                        f"queries/s, {t.get('lost')} lost, verified {t.get('verified')}", bar="none (reference)"))
    e = r.get("end_to_end", {})
    label = f"audited queries end to end (pgbench -S -c{e.get('clients', 16)} via gateway)"
    if "error" in e:
        rows.append(_error_row("audit_end_to_end", label, e))
    elif e:
        ok = e["lost"] == 0 and e["verified"]
        rows.append(Row("audit_end_to_end", label,
                        gateway=f"{_n(e['audited_queries_per_s'])} q/s, {e['recorded']:,}/{e['sent']:,} recorded, "
                                f"verify {'OK' if e['verified'] else 'FAILED'}",
                        bar="0 lost, verify OK", met=ok))
    return rows


def _total_mb(phase: dict) -> float:
    """Peak RSS of the gateway plus its audit chainer's private memory (older results: RSS only)."""
    return phase.get("total_peak_mb") or phase["peak_rss_mb"]


def _split(phase: dict) -> str:
    chainer = phase.get("chainer_private_mb")
    return f" = {phase['peak_rss_mb']} RSS + {chainer} chainer" if chainer is not None else ""


def memory(r: dict) -> list[Row]:
    if "error" in r:
        return [_error_row("memory", "gateway memory", r)]
    s, i, limit = r["streaming"], r["idle_sessions"], r.get("limit_mb", 100)
    return [
        Row("memory_streaming", f"gateway peak memory streaming {s['rows']:,} rows",
            gateway=f"{_total_mb(s)} MB{_split(s)} (idle {r['idle_rss_mb']} MB)", bar=f"≤ {limit} MB",
            met=_total_mb(s) <= limit, value=_total_mb(s) / limit, threshold=1.0, better="lower",
            ratio=_of_bar(_total_mb(s) / limit)),
        Row("memory_idle_sessions", f"gateway peak memory with {i['sessions']} idle sessions",
            gateway=f"{_total_mb(i)} MB{_split(i)} ({i['rss_mb']} MB RSS after {i['hold_s']:g} s)",
            bar=f"≤ {limit} MB", met=_total_mb(i) <= limit, value=_total_mb(i) / limit, threshold=1.0,
            better="lower", ratio=_of_bar(_total_mb(i) / limit)),
    ]


def mysql(r: dict) -> list[Row]:
    if "error" in r:
        return [_error_row("mysql", "MySQL", r)]
    b, c = r["bulk_pymysql"], r["connect_first_query"]
    return [
        Row("mysql_bulk", f"MySQL bulk: {r['rows']:,} rows via PyMySQL (info)", direct=f"{b['direct_s']} s",
            gateway=f"{b['gateway_s']} s", ratio=_x(b["throughput_ratio"]) + " throughput"),
        Row("mysql_connect", "MySQL connect + first query (info)", direct=f"{c['direct_ms']} ms",
            gateway=f"{c['gateway_ms']} ms", ratio=_x(c["time_ratio"])),
    ]


BUILDERS = {"bulk": bulk, "pgbench": pgbench, "connect": connect, "notebook": notebook, "audit": audit,
            "memory": memory, "mysql": mysql}


def rows_for(section: str, result: dict) -> list[Row]:
    try:
        return BUILDERS[section](result)
    except (KeyError, TypeError, ZeroDivisionError) as exc:  # a partial result: say so, never crash the report
        return [Row(section, section, gateway=f"incomplete result ({type(exc).__name__}: {exc})")]
