"""PostgreSQL gateway benchmarks (DESIGN.md §7), each a ratio measured side by side in one run.

    .venv/bin/python benchmarks/postgres.py [--rows 1000000] [--repeat 3] [--connects 50] [--json]

What it does, all on loopback with a private, password-enforcing PostgreSQL 15 (the test fixture's
cluster code) and a gateway running in its own process (``--serve``), as ``sdm gateway`` would:

- bulk: ``SELECT`` of N rows x 4 columns with psycopg ``fetchall``, direct vs through the gateway
  (throughput ratio; the bar is >= 0.90);
- connect + first query (SCRAM upstream), direct vs gateway (time ratio; the bar is <= 1.0);
- ``pgbench -S`` at 1 and 16 clients: direct, gateway, and PgBouncer in session mode (installed with
  apt-get when missing and possible); TPS and average latency;
- gateway memory: RSS idle, peak RSS (VmHWM) while streaming the bulk result, RSS with M idle
  sessions.

The gateway audits every statement (SQLite state + JSON-lines sink) exactly as in production.
This is a script, not a test: nothing here asserts a time.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proxy"))

DATASOURCE = "bench"
BULK_SQL = ("SELECT g AS id, g::text AS name, (g * 1.5)::float8 AS amount, "
            "timestamp '2024-01-01' + g * interval '1 second' AS ts FROM generate_series(1, {rows}) g")


# ---- the gateway process ---------------------------------------------------------------------------


def serve(home: str, port_file: str, use_uvloop: bool) -> None:
    """Run one PostgreSQL listener for the benchmark (the `--serve` mode of this script)."""
    from sdm_proxy.control.context import ControlPlane
    from sdm_proxy.control.unlock import unlock
    from sdm_proxy.gateway import enrol_local_proxy
    from sdm_proxy.home import SdmHome
    from sdm_proxy.unlock.client import InProcessUnlockClient
    from sdm_proxy.wire.postgres import start_postgres_listener

    cp = ControlPlane.open(SdmHome(Path(home)))
    identity = enrol_local_proxy(cp)
    client = InProcessUnlockClient(identity, lambda body: unlock(cp, body))

    audit_log = cp.audit
    if os.environ.get("SDM_BENCH_NULL_AUDIT"):
        class _NullAudit:  # diagnosis only: the relay's own cost, without the audit commit
            def append_many(self, events):
                return events

        audit_log = _NullAudit()

    async def main():
        listener = await start_postgres_listener("127.0.0.1", 0, unlock_client=client, audit_log=audit_log,
                                                 max_connections=5000)
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
    elif use_uvloop:
        import uvloop
        uvloop.run(main())
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


def ensure_pgbouncer() -> str | None:
    path = shutil.which("pgbouncer") or (Path("/usr/sbin/pgbouncer").exists() and "/usr/sbin/pgbouncer")
    if path:
        return str(path)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing pgbouncer with apt-get ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "pgbouncer"], capture_output=True, timeout=600)
        path = shutil.which("pgbouncer") or (Path("/usr/sbin/pgbouncer").exists() and "/usr/sbin/pgbouncer")
        return str(path) if path else None
    return None


def start_pgbouncer(binary: str, pg, workdir: Path) -> tuple[subprocess.Popen, int]:
    from tests.support.accounts import free_port

    port = free_port()
    login = pg.logins["superuser"]
    (workdir / "userlist.txt").write_text(f'"{login.username}" "{login.password}"\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
{pg.database} = host=127.0.0.1 port={pg.port} dbname={pg.database}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir / 'userlist.txt'}
pool_mode = session
max_client_conn = 500
default_pool_size = 100
logfile = {workdir / 'pgbouncer.log'}
pidfile = {workdir / 'pgbouncer.pid'}
""")
    account = None
    cmd = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        import pwd
        account = pwd.getpwnam("postgres") if _has_user("postgres") else pwd.getpwnam("nobody")
        os.chown(workdir, account.pw_uid, account.pw_gid)
        for f in workdir.iterdir():
            os.chown(f, account.pw_uid, account.pw_gid)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            user=account.pw_uid if account else None, group=account.pw_gid if account else None)
    deadline = time.monotonic() + 10
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    log = workdir / "pgbouncer.log"
    raise RuntimeError("pgbouncer did not start: " + (log.read_text()[-2000:] if log.exists() else "")
                       + proc.communicate()[1].decode(errors="replace")[-2000:])


def _has_user(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def pgbench(pg, conninfo: str, password: str, clients: int, transactions: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGSSLMODE="disable")
    binary = str(Path(pg.bindir) / "pgbench")
    out = subprocess.run([binary, "-S", "-n", "-M", "simple", "-c", str(clients), "-j", str(min(clients, 4)),
                          "-t", str(transactions), conninfo], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    tps = latency = None
    for line in out.stdout.splitlines():
        if line.startswith("tps ="):
            tps = float(line.split()[2])
        if line.startswith("latency average"):
            latency = float(line.split("=")[1].split()[0])
    return {"tps": tps, "latency_ms": latency}


# ---- the run ----------------------------------------------------------------------------------------


def run(args) -> dict:
    import psycopg
    from sdm_proxy.control import catalog, sessions
    from sdm_proxy.vault.secret import SecretValue

    from tests.support.gateway_state import GatewayState
    from tests.support.postgres_cluster import find_bindir, running_cluster

    results: dict = {"rows": args.rows}
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries found")
    work = Path(tempfile.mkdtemp(prefix="sdm-bench-"))
    with running_cluster(bindir) as pg:
        # --- control plane: datasource, credential, a user with a lease, a session token
        state = GatewayState.create(work / "home")
        catalog.add_datasource(state.cp, state.admin, DATASOURCE, type="postgres", host="127.0.0.1",
                               port=pg.port, database=pg.database)
        login = pg.logins["superuser"]
        catalog.add_credential(state.cp, state.admin, DATASOURCE, "superuser", username=login.username,
                               secret=SecretValue(login.password.encode()))
        state.role_leasing("bench", DATASOURCE, "superuser")
        analyst = state.add_user("analyst", roles_=("bench",))
        token = sessions.create_session(state.cp, analyst, __import__("datetime").timedelta(hours=6))["token"]
        state.close()

        port_file = work / "port"
        cmd = [sys.executable, __file__, "--serve", str(work / "home"), str(port_file)]
        if args.uvloop:
            cmd.append("--uvloop")
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proxy'}"}
        if args.null_audit:
            env["SDM_BENCH_NULL_AUDIT"] = "1"
            results["WARNING"] = "--null-audit: query events were NOT written; diagnosis figures only"
        gw = subprocess.Popen(cmd, env=env)
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or gw.poll() is not None:
                    raise SystemExit("the gateway process did not start")
                time.sleep(0.05)
            gw_port = int(port_file.read_text())
            direct_kw = {"host": "127.0.0.1", "port": pg.port, "dbname": pg.database, "user": login.username,
                         "password": login.password, "sslmode": "disable"}
            gw_kw = {"host": "127.0.0.1", "port": gw_port, "dbname": DATASOURCE, "user": "superuser",
                     "password": token, "sslmode": "disable"}
            results["gateway_rss_idle_kb"] = rss_kb(gw.pid)["VmRSS"]

            # --- bulk
            sql = BULK_SQL.format(rows=args.rows)

            def bulk(kw):
                with psycopg.connect(**kw) as conn:
                    rows = conn.execute(sql).fetchall()
                    assert len(rows) == args.rows

            bulk(direct_kw), bulk(gw_kw)  # warm up both paths (plans, caches, SCRAM keys)
            reset_peak(gw.pid)
            direct_t, gw_t = [], []
            gw_cpu = 0.0
            for _ in range(args.repeat):  # interleaved so drift hits both sides alike
                direct_t += timed(lambda: bulk(direct_kw), 1)
                before = cpu_s(gw.pid)
                gw_t += timed(lambda: bulk(gw_kw), 1)
                gw_cpu += cpu_s(gw.pid) - before
            mem = rss_kb(gw.pid)
            results["bulk"] = {
                "direct_s": round(statistics.median(direct_t), 3), "gateway_s": round(statistics.median(gw_t), 3),
                "throughput_ratio": round(statistics.median(direct_t) / statistics.median(gw_t), 3),
                "direct_all": [round(t, 3) for t in direct_t], "gateway_all": [round(t, 3) for t in gw_t],
                "gateway_cpu_s_per_run": round(gw_cpu / args.repeat, 3)}
            results["gateway_peak_rss_streaming_kb"] = mem.get("VmHWM")

            # --- connect + first query
            def connect_first(kw):
                with psycopg.connect(**kw) as conn:
                    conn.execute("SELECT 1").fetchone()

            connect_first(gw_kw)
            d = timed(lambda: connect_first(direct_kw), args.connects)
            g = timed(lambda: connect_first(gw_kw), args.connects)
            results["connect_first_query"] = {
                "direct_ms": round(statistics.median(d) * 1000, 2), "gateway_ms": round(statistics.median(g) * 1000, 2),
                "time_ratio": round(statistics.median(g) / statistics.median(d), 2)}

            # --- pgbench -S
            bench_pw = login.password
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            env.update(PGPASSWORD=bench_pw, PGSSLMODE="disable")
            subprocess.run([str(Path(pg.bindir) / "pgbench"), "-i", "-q", "-s", "1",
                            f"host=127.0.0.1 port={pg.port} dbname={pg.database} user={login.username}"],
                           env=env, capture_output=True, check=True, timeout=600)
            targets = {
                "direct": (f"host=127.0.0.1 port={pg.port} dbname={pg.database} user={login.username}", bench_pw),
                "gateway": (f"host=127.0.0.1 port={gw_port} dbname={DATASOURCE} user=superuser", token),
            }
            bouncer = None
            binary = ensure_pgbouncer() if not args.no_pgbouncer else None
            if binary:
                bdir = Path(tempfile.mkdtemp(prefix="sdm-bench-pgbouncer-", dir="/tmp"))  # traversable
                bouncer, bport = start_pgbouncer(binary, pg, bdir)
                targets["pgbouncer"] = (f"host=127.0.0.1 port={bport} dbname={pg.database} user={login.username}",
                                        bench_pw)
            else:
                results["pgbouncer"] = "not available (install pgbouncer to compare)"
            try:
                pgb = {}
                for clients in (1, 16):
                    for name, (conninfo, pw) in targets.items():
                        pgb[f"{name}_c{clients}"] = pgbench(pg, conninfo, pw, clients, args.pgbench_tx)
                results["pgbench_S"] = pgb
            finally:
                if bouncer is not None:
                    bouncer.terminate()
                    bouncer.wait(10)
                    shutil.rmtree(bdir, ignore_errors=True)

            # --- idle sessions
            conns = []
            try:
                for _ in range(args.idle):
                    conns.append(psycopg.connect(**gw_kw))
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
        serve(sys.argv[2], sys.argv[3], "--uvloop" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connects", type=int, default=50)
    parser.add_argument("--pgbench-tx", type=int, default=2000, help="transactions per pgbench client")
    parser.add_argument("--idle", type=int, default=150, help="idle sessions for the memory row "
                        "(the test cluster allows 200 connections)")
    parser.add_argument("--uvloop", action="store_true", help="run the gateway on uvloop (when installed)")
    parser.add_argument("--no-pgbouncer", action="store_true")
    parser.add_argument("--null-audit", action="store_true",
                        help="DIAGNOSIS ONLY: the gateway skips writing query events (shows the relay's own cost)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    b, c = results["bulk"], results["connect_first_query"]
    print(f"bulk {args.rows:,} rows x 4 cols (psycopg fetchall): direct {b['direct_s']}s, gateway {b['gateway_s']}s, "
          f"throughput ratio {b['throughput_ratio']} (bar >= 0.90); gateway CPU {b['gateway_cpu_s_per_run']}s/run")
    print(f"connect + first query: direct {c['direct_ms']} ms, gateway {c['gateway_ms']} ms, ratio {c['time_ratio']}x "
          "(bar <= 1.0)")
    for key, value in results.get("pgbench_S", {}).items():
        print(f"pgbench -S {key}: {value}")
    if isinstance(results.get("pgbouncer"), str):
        print(f"pgbouncer: {results['pgbouncer']}")
    print(f"gateway RSS idle {results['gateway_rss_idle_kb'] // 1024} MB; peak while streaming "
          f"{(results['gateway_peak_rss_streaming_kb'] or 0) // 1024} MB; with "
          f"{results['gateway_rss_idle_sessions_kb']['sessions']} idle sessions "
          f"{results['gateway_rss_idle_sessions_kb']['VmRSS'] // 1024} MB")


if __name__ == "__main__":
    main()
