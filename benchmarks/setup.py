"""What the benchmark runs against, set up and torn down in one place (``Bench``):

- a private, password-enforcing PostgreSQL cluster (the test suite's ``running_cluster``);
- a real ``$SDM_HOME`` (``GatewayState``): datasource ``bench``, its ``superuser`` credential leased
  to role ``bench``, user ``analyst`` holding that role, an API key and a session token for them;
- the real product process, ``sdm gateway --postgres ... --mysql off --api ...`` with ``SDM_HOME``
  set (``GatewayProcess``), restartable, measured from outside through /proc;
- PgBouncer in session mode (started on first use, installed with apt-get when missing and root).

Passwords, the token and the API key are registered in ``Bench.secrets`` so the report can prove
none of them reached a results file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from .forwarder import start_forwarder
from .procs import clean_env, cmdline, free_port
from .pgbouncer import ensure_pgbouncer, pgbouncer_version, start_pgbouncer, terminate

DATASOURCE = "bench"
CREDENTIAL = "superuser"
SDM_BIN = Path(sys.executable).with_name("sdm")
if not SDM_BIN.exists():
    SDM_BIN = Path(shutil.which("sdm") or "sdm")


class Secrets:
    """Values that must never appear in a results file."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, *values: str | None) -> None:
        self._values.update(v for v in values if v and len(v) >= 8)

    def redact(self, text: str) -> tuple[str, int]:
        hits = 0
        for value in self._values:
            if value in text:
                hits += text.count(value)
                text = text.replace(value, "<redacted>")
        return text, hits


class GatewayProcess:
    """``sdm gateway`` as a child process; ``pid`` is the gateway's own Python process (checked)."""

    def __init__(self, home: Path, log_path: Path, *, postgres: bool = True, mysql: bool = False,
                 extra_args: tuple[str, ...] = ()):
        self.home, self.log_path = home, log_path
        self.postgres, self.mysql, self.extra_args = postgres, mysql, tuple(extra_args)
        self.proc: subprocess.Popen | None = None
        self.addresses: dict[str, str] = {}
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the gateway is not running"
        return self.proc.pid

    def port(self, kind: str) -> int:
        return int(self.addresses[kind].rsplit(":", 1)[1])

    @property
    def api_url(self) -> str:
        return self.addresses["api"]

    def command(self, api: int, pg: int, my: int) -> list[str]:
        cmd = [str(SDM_BIN), "gateway", "--api", f"127.0.0.1:{api}",
               "--postgres", f"127.0.0.1:{pg}" if self.postgres else "off",
               "--mysql", f"127.0.0.1:{my}" if self.mysql else "off", *self.extra_args]
        profile = os.environ.get("SDM_BENCH_PROFILE")  # developer aid: a cProfile of the gateway
        if profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", f"{profile}.{self.starts}", *cmd]
        return cmd

    def start(self, timeout: float = 60) -> None:
        info = self.home / "gateway.json"
        for _attempt in range(3):  # free_port() is racy: try again on a clash
            info.unlink(missing_ok=True)
            cmd = self.command(free_port(), free_port(), free_port())
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, env=clean_env(SDM_HOME=str(self.home)), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + timeout
            while not info.exists() and self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if info.exists() and self._listening(info, deadline):
                self.starts += 1
                self._check_identity()
                return
            self.stop()
        raise RuntimeError(f"`sdm gateway` did not start; its log ends:\n{self.log_tail()}")

    def _listening(self, info: Path, deadline: float) -> bool:
        """Every address in gateway.json accepts connections (it is written just before the API starts)."""
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                self.addresses = json.loads(info.read_text())
                for address in self.addresses.values():
                    host_port = address.split("://", 1)[-1]
                    socket.create_connection((host_port.rsplit(":", 1)[0], int(host_port.rsplit(":", 1)[1])),
                                             timeout=1).close()
                return True
            except (OSError, ValueError):
                time.sleep(0.05)
        return False

    def _check_identity(self) -> None:
        argv = cmdline(self.pid)
        if not (any(Path(a).name == "sdm" for a in argv) and "gateway" in argv):
            raise RuntimeError(f"pid {self.pid} is not the gateway process: {argv}")

    def describe(self) -> dict:
        argv = cmdline(self.pid) if self.proc and self.proc.poll() is None else []
        return {"pid_cmdline": [Path(argv[0]).name, *argv[1:]] if argv else None, "starts": self.starts,
                "extra_args": list(self.extra_args)}

    def ensure_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the gateway process is not running; its log ends:\n{self.log_tail()}")

    def stop(self, timeout: float = 90) -> int | None:
        """SIGTERM (the gateway drains, flushes its audit events and signs a checkpoint), then wait."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def make_home(root: Path, *, type_: str, port: int, database: str, username: str, password: str) -> dict:
    """An initialised $SDM_HOME with one datasource and a user who leases its one credential.

    Returns the session token (the database password through the gateway) and the user's API key."""
    from sdm_proxy.control import catalog, roles, sessions, users
    from sdm_proxy.vault.secret import SecretValue

    from tests.support.gateway_state import GatewayState

    state = GatewayState.create(root)
    try:
        catalog.add_datasource(state.cp, state.admin, DATASOURCE, type=type_, host="127.0.0.1", port=port,
                               database=database)
        catalog.add_credential(state.cp, state.admin, DATASOURCE, CREDENTIAL, username=username,
                               secret=SecretValue(password.encode()))
        state.role_leasing("bench", DATASOURCE, CREDENTIAL)
        users.add_user(state.cp, state.admin, "analyst")
        roles.assign_role(state.cp, state.admin, "bench", "analyst")
        api_key = users.create_api_key(state.cp, state.admin, "analyst")
        analyst = users.authenticate_api_key(state.cp, api_key)
        token = sessions.create_session(state.cp, analyst, timedelta(hours=12))["token"]
    finally:
        state.close()
    return {"token": token, "api_key": api_key}


class Bench:
    """The PostgreSQL cluster, the home and the running gateway, for the whole run (a context manager)."""

    def __init__(self, *, max_connections: int = 200, gateway_args: tuple[str, ...] = (),
                 pgbouncer: bool = True, secrets: Secrets | None = None):
        self.max_connections, self.gateway_args, self.want_pgbouncer = max_connections, gateway_args, pgbouncer
        self.secrets = secrets or Secrets()
        self.stack = contextlib.ExitStack()
        self.work = Path(tempfile.mkdtemp(prefix="sdm-bench-"))
        self.stack.callback(shutil.rmtree, self.work, ignore_errors=True)
        self._pgbouncer: tuple[int | None, str] | None = None
        self._pgbench_scale: int | None = None
        self._forwarder: int | None = None

    def __enter__(self) -> "Bench":
        try:
            from tests.support.postgres_cluster import find_bindir, running_cluster

            bindir = find_bindir()
            if bindir is None:
                raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")
            self.pg = self.stack.enter_context(running_cluster(bindir, max_connections=self.max_connections))
            self.login = self.pg.logins["superuser"]
            self.secrets.add(self.pg.superuser_password, *(login.password for login in self.pg.logins.values()))
            made = make_home(self.work / "home", type_="postgres", port=self.pg.port, database=self.pg.database,
                             username=self.login.username, password=self.login.password)
            self.token, self.api_key = made["token"], made["api_key"]
            self.secrets.add(self.token, self.api_key, (self.work / "home" / "admin.key").read_text().strip())
            self.gateway = GatewayProcess(self.work / "home", self.work / "gateway.log",
                                          extra_args=self.gateway_args)
            self.stack.callback(self.gateway.stop)
            self.gateway.start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    @property
    def home(self) -> Path:
        return self.work / "home"

    # ---- where to connect ------------------------------------------------------------------------
    def direct_kw(self) -> dict:
        return {"host": "127.0.0.1", "port": self.pg.port, "dbname": self.pg.database, "user": self.login.username,
                "password": self.login.password, "sslmode": "disable"}

    def gateway_kw(self) -> dict:
        return {"host": "127.0.0.1", "port": self.gateway.port("postgres"), "dbname": DATASOURCE,
                "user": CREDENTIAL, "password": self.token, "sslmode": "disable"}

    def conninfo(self, target: str) -> tuple[str, str]:
        """(libpq conninfo without the password, the password) for direct, gateway or pgbouncer."""
        if target == "gateway":
            kw = self.gateway_kw()
        elif target == "pgbouncer":
            kw = {**self.direct_kw(), "port": self.pgbouncer()[0]}
        elif target == "forwarder":
            kw = {**self.direct_kw(), "port": self.forwarder()}
        else:
            kw = self.direct_kw()
        password = kw.pop("password")
        kw.pop("sslmode")
        return " ".join(f"{k}={v}" for k, v in kw.items()), password

    def server_version(self) -> str:
        import psycopg

        with psycopg.connect(**self.direct_kw()) as conn:
            return "PostgreSQL " + conn.execute("SHOW server_version").fetchone()[0]

    def pg_tool(self, name: str) -> str:
        return str(Path(self.pg.bindir) / name)

    @staticmethod
    def tool_env(password: str) -> dict[str, str]:
        return clean_env(PGPASSWORD=password, PGSSLMODE="disable")  # never in argv, where `ps` shows it

    def pgbench_init(self, scale: int) -> None:
        if self._pgbench_scale == scale:
            return
        if not Path(self.pg_tool("pgbench")).exists():
            raise RuntimeError(f"no pgbench next to the PostgreSQL server binaries in {self.pg.bindir}")
        conninfo, password = self.conninfo("direct")
        subprocess.run([self.pg_tool("pgbench"), "-i", "-q", "-s", str(scale), conninfo], env=self.tool_env(password),
                       capture_output=True, check=True, timeout=900)
        self._pgbench_scale = scale

    # ---- PgBouncer -------------------------------------------------------------------------------
    def forwarder(self) -> int:
        """Port of the bare Python forwarder (``benchmarks/forwarder.py``) to the cluster, started once."""
        if self._forwarder is None:
            proc, port = start_forwarder(self.pg.port)
            self.stack.callback(terminate, proc)
            self._forwarder = port
        return self._forwarder

    def pgbouncer(self) -> tuple[int | None, str]:
        """(port, version) of a running PgBouncer in session mode, or (None, why not)."""
        if self._pgbouncer is None:
            if not self.want_pgbouncer:
                self._pgbouncer = (None, "skipped (--no-pgbouncer)")
            else:
                binary = ensure_pgbouncer()
                if binary is None:
                    self._pgbouncer = (None, "not installed (apt-get install pgbouncer)")
                else:
                    bdir = Path(tempfile.mkdtemp(prefix="sdm-bench-pgbouncer-", dir="/tmp"))  # traversable
                    self.stack.callback(shutil.rmtree, bdir, ignore_errors=True)
                    proc, port = start_pgbouncer(binary, self.pg, bdir)
                    self.stack.callback(terminate, proc)
                    self._pgbouncer = (port, pgbouncer_version(binary))
        return self._pgbouncer
