"""``python -m benchmarks``: every speed figure of DESIGN.md §7 / issue #6, side by side in one run.

    .venv/bin/python -m benchmarks                 # full sizes (1,000,000 rows, 10 s pgbench runs, ...)
    .venv/bin/python -m benchmarks --quick         # a smoke run with small sizes
    .venv/bin/python -m benchmarks --only bulk,connect --rows 200000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.support (the private servers) lives in the repo, not the venv
    sys.path.insert(0, str(ROOT))

from benchmarks import machine, report, table  # noqa: E402

SECTIONS = ("bulk", "pgbench", "connect", "notebook", "audit", "memory", "mysql")
ALIASES = {"small": "pgbench", "small-queries": "pgbench", "sql": "notebook", "dataframe": "notebook",
           "mem": "memory", "connect-first": "connect"}
FULL = dict(rows=1_000_000, repeat=3, connects=50, pgbench_seconds=10, pgbench_rounds=3, pgbench_scale=1,
            idle=200, notebook_repeat=3, audit_tx=2_000, audit_events=200_000, audit_producers=16, mysql_round_trips=2_000)
QUICK = dict(rows=20_000, repeat=1, connects=5, pgbench_seconds=2, pgbench_rounds=1, pgbench_scale=1,
             idle=20, notebook_repeat=1, audit_tx=100, audit_events=5_000, audit_producers=4, mysql_round_trips=200)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"sections: {', '.join(SECTIONS)} (mysql only with --mysql or --only mysql)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (each size below overrides)")
    p.add_argument("--only", action="append", metavar="SECTIONS", help="comma-separated sections to run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results directory")
    p.add_argument("--rows", type=int, help="rows of the bulk, DataFrame and streaming figures (1,000,000)")
    p.add_argument("--repeat", type=int, help="bulk runs per side; the median counts (3)")
    p.add_argument("--connects", type=int, help="connect + first query samples per side (50)")
    p.add_argument("--pgbench-seconds", type=float, help="pgbench -T per run (10)")
    p.add_argument("--pgbench-rounds", type=int,
                   help="rounds of every pgbench path, interleaved; medians count, the range is kept (3)")
    p.add_argument("--pgbench-scale", type=int, help="pgbench -i -s (1)")
    p.add_argument("--idle", type=int, help="idle sessions held through the gateway (200)")
    p.add_argument("--notebook-repeat", type=int, help="DataFrame runs per method; the median counts (3)")
    p.add_argument("--audit-tx", type=int, help="pgbench -t per client (16 clients) for the audit row (2,000)")
    p.add_argument("--audit-events", type=int, help="events for benchmarks.audit_rate.measure (200,000)")
    p.add_argument("--audit-producers", type=int, help="producers for benchmarks.audit_rate.measure (16)")
    p.add_argument("--mysql-round-trips", type=int, help="SELECT 1 round trips for the MySQL rows (2,000)")
    p.add_argument("--no-pgbouncer", action="store_true", help="skip PgBouncer (its columns become n/a)")
    p.add_argument("--no-jupysql", action="store_true", help="skip JupySQL in the DataFrame row")
    p.add_argument("--mysql", action="store_true", help="add the MySQL rows (a private MariaDB, informational)")
    p.add_argument("--gateway-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `sdm gateway`, e.g. --gateway-arg=--verbose (repeatable)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    chosen = []
    for item in args.only or []:
        for name in filter(None, (s.strip().lower() for s in item.split(","))):
            name = ALIASES.get(name, name)
            if name not in SECTIONS:
                p.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
            chosen.append(name)
    if not chosen:
        chosen = [s for s in SECTIONS if s != "mysql" or args.mysql]
    args.sections = [s for s in SECTIONS if s in chosen]  # always in the order
    if args.rows < 10 or args.idle < 1:
        p.error("--rows must be at least 10 and --idle at least 1")
    if args.pgbench_rounds < 1:
        p.error("--pgbench-rounds must be at least 1")
    return args


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {text}", file=sys.stderr, flush=True)


def run_pg_section(name: str, bench, args, progress=None) -> dict:
    from benchmarks import audit, memory, notebook, pg_rows, pgbench

    if name == "bulk":
        return pg_rows.bulk(bench, args.rows, args.repeat)
    if name == "pgbench":
        return pgbench.section(bench, args.pgbench_seconds, args.pgbench_scale, args.pgbench_rounds, progress)
    if name == "connect":
        return pg_rows.connect(bench, args.connects)
    if name == "notebook":
        return notebook.section(bench, args.rows, args.notebook_repeat, use_jupysql=not args.no_jupysql)
    if name == "audit":
        return audit.section(bench, args.audit_tx, args.pgbench_scale, args.audit_events, args.audit_producers)
    if name == "memory":
        return memory.section(bench, args.rows, args.idle)
    raise ValueError(name)


def _guarded(name: str, fn, secrets, progress: Progress) -> dict:
    t0 = time.monotonic()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
        text, _ = secrets.redact("".join(traceback.format_exception(exc)))
        print(text, file=sys.stderr)
        result = {"error": secrets.redact(f"{type(exc).__name__}: {exc}")[0][:1000]}
    summary = "; ".join(f"{r.label}: {r.ratio if r.ratio != table.DASH else r.gateway} (met: {r.met})"
                        for r in table.rows_for(name, result))
    progress(f"{name}: done in {time.monotonic() - t0:.1f}s: {secrets.redact(summary)[0]}")
    return result


def main(argv: list[str] | None = None) -> int:
    from benchmarks.pgbouncer import pgbouncer_version
    from benchmarks.setup import Bench, Secrets

    args = parse_args(argv)
    progress = Progress()
    load_at_start = os.getloadavg()
    secrets = Secrets()
    params = {k: getattr(args, k) for k in (*FULL, "no_pgbouncer", "no_jupysql", "gateway_arg")}
    results: dict = {"schema": 1, "profile": "quick" if args.quick else "full", "parameters": params,
                     "machine": {}, "sections": {}}
    pg_sections = [s for s in args.sections if s != "mysql"]
    server = bindir = None
    progress(f"sections: {', '.join(args.sections)}; results into {args.out}")
    if pg_sections:
        with Bench(max_connections=max(200, args.idle + 60), gateway_args=tuple(args.gateway_arg),
                   pgbouncer=not args.no_pgbouncer, secrets=secrets) as bench:
            progress(f"setup: PostgreSQL on :{bench.pg.port}, `sdm gateway` pid {bench.gateway.pid} "
                     f"(postgres :{bench.gateway.port('postgres')})")
            bindir, server = bench.pg.bindir, bench.server_version()
            results["gateway"] = bench.gateway.describe()
            for name in pg_sections:
                if bench.gateway.proc is None or bench.gateway.proc.poll() is not None:
                    progress(f"the gateway is down (exit {getattr(bench.gateway.proc, 'returncode', None)}); "
                             f"starting it again before {name}")
                    results.setdefault("gateway_down_before", []).append(name)
                    bench.gateway.start()
                results["sections"][name] = _guarded(name, lambda n=name: run_pg_section(n, bench, args, progress),
                                                     secrets, progress)
    if "mysql" in args.sections:
        from benchmarks import mysql_rows

        with tempfile.TemporaryDirectory(prefix="sdm-bench-my-") as work:
            results["sections"]["mysql"] = _guarded("mysql", lambda: mysql_rows.section(
                Path(work), secrets, args.rows, args.repeat, args.connects, args.mysql_round_trips,
                tuple(args.gateway_arg)), secrets, progress)
    results["machine"] = machine.describe(bindir, server, pgbouncer_version(), load_at_start)
    results["elapsed_s"] = round(time.monotonic() - progress.start, 1)
    rows = [row for name, result in results["sections"].items() for row in table.rows_for(name, result)]
    paths = report.write(results, rows, args.out, secrets)
    print(secrets.redact(report.table_markdown(rows))[0])
    progress("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [k for k, v in results["sections"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
