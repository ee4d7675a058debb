"""MySQL/MariaDB gateway benchmarks (issue 4), each a ratio measured side by side in one run.

    .venv/bin/python benchmarks/mysql.py [--rows 1000000] [--repeat 3] [--connects 50] [--json]

What it does, all on loopback with a private, password-enforcing MariaDB (the test fixture's server
code) and a gateway running in its own process (``--serve``), as ``sdm gateway`` would:

- bulk read: ``SELECT`` of N rows x 4 columns (MariaDB's sequence engine), direct vs through the
  gateway, with two clients: PyMySQL ``fetchall`` (what notebooks use; the client is the slow part)
  and the ``mariadb`` C client in ``--quick --batch`` mode to /dev/null (shows the gateway's own cost);
  throughput ratio = direct time / gateway time;
- connect + first query (``SELECT 1``), direct vs gateway (time ratio; the gateway does an extra
  round trip for the token, a dual-key unlock, a durable ``session.start`` and its own upstream login);
- small queries: ``SELECT 1`` round trips on one open connection (latency, each audited durably);
- gateway memory: RSS idle, peak RSS (VmHWM) while streaming the bulk result, RSS with M idle sessions.

The gateway audits every statement (SQLite state) exactly as in production. This is a script, not a
test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proxy"))

DATASOURCE = "bench"
BULK_SQL = ("SELECT seq AS id, CONCAT('name-', seq) AS name, seq * 1.5 AS amount, "
            "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND AS ts FROM seq_1_to_{rows}")


# ---- the gateway process ---------------------------------------------------------------------------


def serve(home: str, port_file: str) -> None:
    """Run one MySQL listener for the benchmark (the `--serve` mode of this script)."""
    from sdm_proxy.control.context import ControlPlane
    from sdm_proxy.gateway import enrol_local_proxy, in_process_unlock_client
    from sdm_proxy.home import SdmHome
    from sdm_proxy.wire.mysql import start_mysql_listener

    cp = ControlPlane.open(SdmHome(Path(home)))
    identity = enrol_local_proxy(cp)
    client = in_process_unlock_client(cp, identity)

    async def main():
        listener = await start_mysql_listener("127.0.0.1", 0, unlock_client=client, audit_log=cp.audit,
                                              policy_check=client.still_allowed, max_connections=5000)
        Path(port_file).write_text(str(listener.port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await listener.drain(timeout=5)

    profile = os.environ.get("SDM_BENCH_PROFILE")
    if profile:  # developer aid: SDM_BENCH_PROFILE=/tmp/gw.prof writes a cProfile of the gateway
        import cProfile
        cProfile.runctx("asyncio.run(main())", globals(), {"main": main, "asyncio": asyncio}, profile)
    else:
        asyncio.run(main())


# ---- helpers ------------------------------------------------------------------------------------------


def rss_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> None:
    try:  # Linux >= 4.0: writing 5 to clear_refs resets VmHWM
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def side_by_side(direct, gateway, repeat: int, gw_pid: int) -> dict:
    """Interleaved runs so drift hits both sides alike; medians and the throughput ratio."""
    direct(), gateway()  # warm up both paths
    d, g, cpu = [], [], 0.0
    for _ in range(repeat):
        d += timed(direct, 1)
        before = cpu_s(gw_pid)
        g += timed(gateway, 1)
        cpu += cpu_s(gw_pid) - before
    return {"direct_s": round(statistics.median(d), 3), "gateway_s": round(statistics.median(g), 3),
            "throughput_ratio": round(statistics.median(d) / statistics.median(g), 3),
            "direct_all": [round(t, 3) for t in d], "gateway_all": [round(t, 3) for t in g],
            "gateway_cpu_s_per_run": round(cpu / repeat, 3)}


# ---- the run ----------------------------------------------------------------------------------------


def run(args) -> dict:
    import pymysql
    from sdm_proxy.control import catalog, sessions
    from sdm_proxy.vault.secret import SecretValue

    from tests.support.gateway_state import GatewayState
    from tests.support.mysql_server import find_binaries, running_server

    results: dict = {"rows": args.rows}
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("no MariaDB server binaries found")
    work = Path(tempfile.mkdtemp(prefix="sdm-bench-my-"))
    with running_server(*binaries) as db:
        # --- control plane: datasource, credential, a user with a lease, a session token
        state = GatewayState.create(work / "home")
        catalog.add_datasource(state.cp, state.admin, DATASOURCE, type="mysql", host="127.0.0.1",
                               port=db.port, database=db.database)
        login = db.logins["superuser"]
        catalog.add_credential(state.cp, state.admin, DATASOURCE, "superuser", username=login.username,
                               secret=SecretValue(login.password.encode()))
        state.role_leasing("bench", DATASOURCE, "superuser")
        analyst = state.add_user("analyst", roles_=("bench",))
        token = sessions.create_session(state.cp, analyst, timedelta(hours=6))["token"]
        state.close()

        port_file = work / "port"
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proxy'}"}
        gw = subprocess.Popen([sys.executable, __file__, "--serve", str(work / "home"), str(port_file)], env=env)
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or gw.poll() is not None:
                    raise SystemExit("the gateway process did not start")
                time.sleep(0.05)
            gw_port = int(port_file.read_text())
            # ssl_disabled: PyMySQL >= 1.2 otherwise builds a default SSL context (~20 ms of CA loading)
            # in every connect, on both sides alike, which would hide what the gateway costs.
            direct_kw = {"host": "127.0.0.1", "port": db.port, "database": db.database, "user": login.username,
                         "password": login.password, "ssl_disabled": True}
            gw_kw = {"host": "127.0.0.1", "port": gw_port, "database": DATASOURCE, "user": "superuser",
                     "password": token, "ssl_disabled": True}
            results["gateway_rss_idle_kb"] = rss_kb(gw.pid)["VmRSS"]
            sql = BULK_SQL.format(rows=args.rows)

            # --- bulk, PyMySQL
            def bulk(kw):
                with pymysql.connect(**kw) as conn, conn.cursor() as cur:
                    cur.execute(sql)
                    assert len(cur.fetchall()) == args.rows

            reset_peak(gw.pid)
            results["bulk_pymysql"] = side_by_side(lambda: bulk(direct_kw), lambda: bulk(gw_kw), args.repeat, gw.pid)
            results["gateway_peak_rss_streaming_kb"] = rss_kb(gw.pid).get("VmHWM")

            # --- bulk, the mariadb C client
            cli = shutil.which("mariadb") or shutil.which("mysql")
            if cli:
                def bulk_cli(port, user, password, database):
                    out = subprocess.run(
                        [cli, "--no-defaults", "-h", "127.0.0.1", "-P", str(port), "-u", user,
                         "--protocol=TCP", "--skip-ssl", "--quick", "--batch", "--skip-column-names", database,
                         "-e", sql], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600, check=False,
                        env={**os.environ, "MYSQL_PWD": password})  # not in argv, where `ps` shows it
                    assert out.returncode == 0, out.stderr

                results["bulk_cli"] = side_by_side(
                    lambda: bulk_cli(db.port, login.username, login.password, db.database),
                    lambda: bulk_cli(gw_port, "superuser", token, DATASOURCE), args.repeat, gw.pid)
            else:
                results["bulk_cli"] = "no mariadb/mysql client on PATH"

            # --- connect + first query
            def connect_first(kw):
                with pymysql.connect(**kw) as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()

            connect_first(gw_kw)
            d = timed(lambda: connect_first(direct_kw), args.connects)
            g = timed(lambda: connect_first(gw_kw), args.connects)
            results["connect_first_query"] = {
                "direct_ms": round(statistics.median(d) * 1000, 2), "gateway_ms": round(statistics.median(g) * 1000, 2),
                "time_ratio": round(statistics.median(g) / statistics.median(d), 2)}

            # --- small queries on one connection
            def round_trips(kw, n):
                with pymysql.connect(**kw) as conn, conn.cursor() as cur:
                    t0 = time.perf_counter()
                    for _ in range(n):
                        cur.execute("SELECT 1")
                        cur.fetchone()
                    return (time.perf_counter() - t0) / n

            d_rt = round_trips(direct_kw, args.small)
            g_rt = round_trips(gw_kw, args.small)
            results["select1_round_trip"] = {"direct_us": round(d_rt * 1e6, 1), "gateway_us": round(g_rt * 1e6, 1),
                                             "added_us": round((g_rt - d_rt) * 1e6, 1)}

            # --- idle sessions
            conns = []
            try:
                for _ in range(args.idle):
                    conns.append(pymysql.connect(**gw_kw))
                time.sleep(0.5)
                results["gateway_rss_idle_sessions_kb"] = {"sessions": len(conns), **rss_kb(gw.pid)}
            finally:
                for c in conns:
                    c.close()
        finally:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(15)
            except subprocess.TimeoutExpired:
                gw.kill()
    shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connects", type=int, default=50)
    parser.add_argument("--small", type=int, default=2000, help="SELECT 1 round trips per side")
    parser.add_argument("--idle", type=int, default=150, help="idle sessions for the memory row "
                        "(the test server allows 200 connections)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    b = results["bulk_pymysql"]
    print(f"bulk {args.rows:,} rows x 4 cols (PyMySQL fetchall): direct {b['direct_s']}s, gateway {b['gateway_s']}s, "
          f"throughput ratio {b['throughput_ratio']}; gateway CPU {b['gateway_cpu_s_per_run']}s/run")
    b = results["bulk_cli"]
    if isinstance(b, dict):
        print(f"bulk {args.rows:,} rows x 4 cols (mariadb --quick, C client): direct {b['direct_s']}s, "
              f"gateway {b['gateway_s']}s, throughput ratio {b['throughput_ratio']}; "
              f"gateway CPU {b['gateway_cpu_s_per_run']}s/run")
    else:
        print(f"bulk (C client): {b}")
    c = results["connect_first_query"]
    print(f"connect + first query: direct {c['direct_ms']} ms, gateway {c['gateway_ms']} ms, ratio {c['time_ratio']}x")
    r = results["select1_round_trip"]
    print(f"SELECT 1 round trip: direct {r['direct_us']} us, gateway {r['gateway_us']} us (+{r['added_us']} us, "
          "each statement audited durably)")
    print(f"gateway RSS idle {results['gateway_rss_idle_kb'] // 1024} MB; peak while streaming "
          f"{(results['gateway_peak_rss_streaming_kb'] or 0) // 1024} MB; with "
          f"{results['gateway_rss_idle_sessions_kb']['sessions']} idle sessions "
          f"{results['gateway_rss_idle_sessions_kb']['VmRSS'] // 1024} MB")


if __name__ == "__main__":
    main()
