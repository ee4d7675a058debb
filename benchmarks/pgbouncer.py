"""PgBouncer in session mode in front of the private cluster (the small-query comparison).

Installed with apt-get when missing and running as root; run as ``postgres`` (or ``nobody``) because
it refuses to run as root. Its auth file holds the cluster password: it lives in a private temp
directory that ``Bench`` removes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .procs import clean_env, free_port


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    return str(found) if found else None


def ensure_pgbouncer() -> str | None:
    if find_pgbouncer() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("benchmarks: installing pgbouncer with apt-get ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "pgbouncer"], capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return find_pgbouncer()


def pgbouncer_version(binary: str | None = None) -> str | None:
    binary = binary or find_pgbouncer()
    if not binary:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else None


def start_pgbouncer(binary: str, pg, workdir: Path) -> tuple[subprocess.Popen, int]:
    login = pg.logins["superuser"]
    port = free_port()
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
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                account = pwd.getpwnam(name)
                break
        for f in (workdir, *workdir.iterdir()):
            os.chown(f, account.pw_uid, account.pw_gid)
    proc = subprocess.Popen([binary, str(workdir / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=clean_env(),
                            user=account.pw_uid if account else None, group=account.pw_gid if account else None)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    terminate(proc)
    log = workdir / "pgbouncer.log"
    raise RuntimeError("pgbouncer did not start: " + (log.read_text()[-2000:] if log.exists() else ""))
