"""Optional MySQL rows (``--mysql``): bulk read and connect + first query, direct to a private,
password-enforcing MariaDB vs through the real ``sdm gateway --postgres off --mysql ...`` (its own
$SDM_HOME and process, so the PostgreSQL rows are not disturbed). Informational: the issue's bars
are PostgreSQL's.

- bulk: N rows x 4 columns (MariaDB's sequence engine) with PyMySQL ``fetchall`` (what notebooks
  use) and, when installed, the ``mariadb`` C client in ``--quick --batch`` mode to /dev/null (shows
  the gateway's own cost, the client being fast);
- connect + first query (``SELECT 1``), medians of interleaved runs;
- ``SELECT 1`` round trips on one open connection (each audited).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time

from .measure import median, side_by_side, timed
from .procs import reset_peak, rss_kb
from .setup import CREDENTIAL, DATASOURCE, GatewayProcess, make_home

BULK_SQL = ("SELECT seq AS id, CONCAT('name-', seq) AS name, seq * 1.5 AS amount, "
            "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND AS ts FROM seq_1_to_{rows}")


def section(work, secrets, rows: int, repeat: int, connects: int, round_trips: int,
            gateway_args: tuple[str, ...] = ()) -> dict:
    from tests.support.mysql_server import find_binaries, running_server

    binaries = find_binaries()
    if binaries is None:
        return {"error": "no MariaDB/MySQL server binary on this machine"}
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(running_server(*binaries))
        login = db.logins["superuser"]
        secrets.add(db.superuser_password, *(x.password for x in db.logins.values()))
        made = make_home(work / "home-mysql", type_="mysql", port=db.port, database=db.database,
                         username=login.username, password=login.password)
        secrets.add(made["token"], made["api_key"])
        gateway = GatewayProcess(work / "home-mysql", work / "gateway-mysql.log", postgres=False, mysql=True,
                                 extra_args=gateway_args)
        stack.callback(gateway.stop)
        gateway.start()
        # ssl_disabled: PyMySQL >= 1.2 otherwise builds a default SSL context in every connect.
        direct = {"host": "127.0.0.1", "port": db.port, "database": db.database, "user": login.username,
                  "password": login.password, "ssl_disabled": True}
        via_gw = {"host": "127.0.0.1", "port": gateway.port("mysql"), "database": DATASOURCE, "user": CREDENTIAL,
                  "password": made["token"], "ssl_disabled": True}
        out = {"server": _server_version(direct), "rows": rows}
        out.update(_measure(gateway, direct, via_gw, rows, repeat, connects, round_trips))
        gateway.ensure_alive()
        return out


def _server_version(kw: dict) -> str:
    import pymysql

    with pymysql.connect(**kw) as conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        return cur.fetchone()[0]


def _measure(gateway, direct: dict, via_gw: dict, rows: int, repeat: int, connects: int, n_rt: int) -> dict:
    import pymysql

    sql = BULK_SQL.format(rows=int(rows))
    out: dict = {}

    def bulk(kw):
        with pymysql.connect(**kw) as conn, conn.cursor() as cur:
            cur.execute(sql)
            if len(cur.fetchall()) != rows:
                raise AssertionError("wrong row count")

    bulk(direct), bulk(via_gw)
    reset_peak(gateway.pid)
    res = side_by_side(lambda: bulk(direct), lambda: bulk(via_gw), repeat, gateway.pid, warm_up=False)
    out["bulk_pymysql"] = {**res, "throughput_ratio": round(res["direct_s"] / res["gateway_s"], 3),
                           "direct_rows_per_s": round(rows / res["direct_s"]),
                           "gateway_rows_per_s": round(rows / res["gateway_s"]),
                           "gateway_peak_rss_kb": rss_kb(gateway.pid).get("VmHWM")}

    cli = shutil.which("mariadb") or shutil.which("mysql")
    if cli:
        def bulk_cli(kw):
            done = subprocess.run(
                [cli, "--no-defaults", "-h", "127.0.0.1", "-P", str(kw["port"]), "-u", kw["user"], "--protocol=TCP",
                 "--skip-ssl", "--quick", "--batch", "--skip-column-names", kw["database"], "-e", sql],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900,
                env={**os.environ, "MYSQL_PWD": kw["password"]})  # not in argv, where `ps` shows it
            if done.returncode != 0:
                raise RuntimeError(done.stderr.decode(errors="replace")[-300:])

        res = side_by_side(lambda: bulk_cli(direct), lambda: bulk_cli(via_gw), repeat, gateway.pid)
        out["bulk_cli"] = {**res, "throughput_ratio": round(res["direct_s"] / res["gateway_s"], 3)}
    else:
        out["bulk_cli"] = {"error": "no mariadb/mysql client on PATH"}

    def first_query(kw):
        with pymysql.connect(**kw) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    first_query(direct), first_query(via_gw)
    d, g = [], []
    for _ in range(connects):
        d += timed(lambda: first_query(direct))
        g += timed(lambda: first_query(via_gw))
    out["connect_first_query"] = {"samples": connects, "direct_ms": round(median(d) * 1000, 2),
                                  "gateway_ms": round(median(g) * 1000, 2),
                                  "time_ratio": round(median(g) / median(d), 3)}

    def round_trip(kw):
        with pymysql.connect(**kw) as conn, conn.cursor() as cur:
            t0 = time.perf_counter()
            for _ in range(n_rt):
                cur.execute("SELECT 1")
                cur.fetchone()
            return (time.perf_counter() - t0) / n_rt

    d_rt, g_rt = round_trip(direct), round_trip(via_gw)
    out["select1_round_trip"] = {"count": n_rt, "direct_us": round(d_rt * 1e6, 1), "gateway_us": round(g_rt * 1e6, 1),
                                 "added_us": round((g_rt - d_rt) * 1e6, 1)}
    return out
