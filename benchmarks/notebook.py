"""Row 4 of the issue: N rows into a pandas DataFrame from a real IPython shell, three ways:

- ``df = %sdm sql bench SELECT ...`` through the gateway (the product's magic, as an analyst runs it;
  it finds the gateway and opens its session from SDM_GATEWAY_URL / SDM_API_KEY / SDM_GATEWAY_POSTGRES);
- ``df = %sql SELECT ...`` with JupySQL connected directly to the cluster (``autopandas = True``);
- ``pandas.read_sql(sql, engine)`` directly (SQLAlchemy + psycopg).

Both sides use plain TCP (``sslmode=disable``; the private cluster has no TLS), so the comparison is
like for like; ``sdm_sql_tls_s`` adds one run with the magic's default ``sslmode=prefer`` (TLS to the
gateway, what an analyst gets out of the box). Every result is checked: N rows, the dtypes of each
method, and the values of sample rows against ``read_sql``'s.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .pg_rows import bulk_sql
from .setup import DATASOURCE

_ENV = ("SDM_GATEWAY_URL", "SDM_API_KEY", "SDM_GATEWAY_POSTGRES", "SDM_HOME", "IPYTHONDIR",
        "PLOOMBER_STATS_ENABLED", "PLOOMBER_VERSION_CHECK_DISABLED", "PLOOMBER_HOME_DIR", "MPLBACKEND")


def jupysql_available() -> bool:
    try:
        import sql  # noqa: F401  (JupySQL's package)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def notebook_env(bench, work: Path):
    """What a notebook server would set for the kernel, restored afterwards."""
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(
        SDM_GATEWAY_URL=bench.gateway.api_url, SDM_API_KEY=bench.api_key,
        SDM_GATEWAY_POSTGRES=f"127.0.0.1:{bench.gateway.port('postgres')}", SDM_HOME=str(work / "no-home"),
        IPYTHONDIR=str(work / "ipython"), PLOOMBER_STATS_ENABLED="false", PLOOMBER_VERSION_CHECK_DISABLED="true",
        PLOOMBER_HOME_DIR=str(work / "ploomber"), MPLBACKEND="Agg")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    return InteractiveShell.instance(config=config)


def run_cell(shell, code: str) -> float:
    """Run one cell quietly; its wall time in seconds. Raises with the cell's error."""
    from IPython.utils.capture import capture_output

    t0 = time.perf_counter()
    with capture_output(display=True):
        result = shell.run_cell(code, store_history=False, silent=False)
    elapsed = time.perf_counter() - t0
    error = result.error_before_exec or result.error_in_exec
    if error is not None:
        raise RuntimeError(f"cell {code[:60]!r} failed: {type(error).__name__}: {error}")
    return elapsed


def section(bench, rows: int, repeat: int, use_jupysql: bool = True) -> dict:
    from sqlalchemy import URL, create_engine

    work = bench.work / "notebook"
    work.mkdir(exist_ok=True)
    sql = bulk_sql(rows)
    out: dict = {"rows": rows, "repeat": repeat, "sslmode": "disable"}
    with notebook_env(bench, work):
        shell = make_shell()
        kw = bench.direct_kw()
        engine = create_engine(URL.create("postgresql+psycopg", username=kw["user"], password=kw["password"],
                                          host=kw["host"], port=kw["port"], database=kw["dbname"]),
                               connect_args={"sslmode": "disable"})
        shell.user_ns.update(bench_engine=engine, bench_sql=sql)
        run_cell(shell, "import pandas\n%load_ext sdm_jupyter\n%config SdmMagics.sslmode = 'disable'")
        cells = {"sdm_sql": f"df = %sdm sql {DATASOURCE} {sql}"}
        if use_jupysql and jupysql_available():
            run_cell(shell, "%load_ext sql\n%config SqlMagic.autopandas = True\n%config SqlMagic.displaycon = False\n"
                            "%config SqlMagic.feedback = 0\n%sql bench_engine")
            cells["jupysql"] = f"df = %sql {sql}"
        else:
            out["jupysql_missing"] = "skipped (--no-jupysql)" if not use_jupysql else "JupySQL is not installed"
        cells["read_sql"] = "df = pandas.read_sql(bench_sql, bench_engine)"
        try:
            out.update(_time_cells(shell, cells, rows, repeat))
            bench.gateway.ensure_alive()
            # Out of the box: the magic's default sslmode (prefer: TLS to the gateway's listener).
            run_cell(shell, "%config SdmMagics.sslmode = 'prefer'")
            run_cell(shell, cells["sdm_sql"].replace(sql, bulk_sql(min(rows, 1000))))  # warm the new engine
            out["sdm_sql_tls_s"] = round(run_cell(shell, cells["sdm_sql"]), 3)
            shell.user_ns.pop("df", None)
        finally:
            with contextlib.suppress(Exception):
                run_cell(shell, "%unload_ext sdm_jupyter")
            if "jupysql" in cells:
                from sql.connection import ConnectionManager

                ConnectionManager.close_all(verbose=False)
            engine.dispose()
            for name in ("df", "bench_engine", "bench_sql"):
                shell.user_ns.pop(name, None)
    if "jupysql_s" in out:
        out["time_ratio_vs_jupysql"] = round(out["sdm_sql_s"] / out["jupysql_s"], 3)
    out["time_ratio_vs_read_sql"] = round(out["sdm_sql_s"] / out["read_sql_s"], 3)
    return out


def _time_cells(shell, cells: dict[str, str], rows: int, repeat: int) -> dict:
    small = bulk_sql(min(rows, 1000))
    shell.user_ns["bench_sql"] = small
    for code in cells.values():  # warm up: imports, connections, the gateway session
        run_cell(shell, code.replace(bulk_sql(rows), small))
    shell.user_ns["bench_sql"] = bulk_sql(rows)
    times: dict[str, list[float]] = {name: [] for name in cells}
    frames = {}
    for _ in range(repeat):  # interleaved
        for name, code in cells.items():
            shell.user_ns.pop("df", None)
            times[name].append(run_cell(shell, code))
            frames[name] = shell.user_ns.pop("df")
    out = {f"{name}_s": round(sorted(t)[len(t) // 2], 3) for name, t in times.items()}
    out["all_s"] = {name: [round(x, 3) for x in t] for name, t in times.items()}
    out["checks"] = check_frames(frames, rows)
    return out


def check_frames(frames: dict, rows: int) -> dict:
    """Row counts, dtypes per method, and sample rows compared with read_sql's."""
    reference = frames["read_sql"]
    picks = sorted({0, 1, rows // 3, rows // 2, rows - 2, rows - 1} & set(range(rows)))
    want = _sample(reference, picks)
    checks: dict = {"rows": {n: len(f) for n, f in frames.items()},
                    "dtypes": {n: {c: str(t) for c, t in f.dtypes.items()} for n, f in frames.items()}}
    checks["rows_ok"] = all(count == rows for count in checks["rows"].values())
    checks["columns_ok"] = all(list(f.columns) == list(reference.columns) for f in frames.values())
    checks["dtypes_identical"] = all(d == checks["dtypes"]["read_sql"] for d in checks["dtypes"].values())
    checks["sample_values_identical"] = all(_sample(f, picks) == want for f in frames.values())
    checks["ok"] = checks["rows_ok"] and checks["columns_ok"] and checks["sample_values_identical"]
    return checks


def _sample(frame, picks: list[int]) -> list[list]:
    import pandas as pd

    def norm(value):
        if isinstance(value, pd.Timestamp):
            return value.to_pydatetime()
        return value.item() if hasattr(value, "item") else value

    return [[norm(v) for v in frame.iloc[i].tolist()] for i in picks]
