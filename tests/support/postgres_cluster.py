"""A private PostgreSQL cluster that enforces passwords (scram-sha-256, one md5 login).

Trust auth would let any injected credential "work", so it is never configured: every
connection, even over the unix socket, must present the right password.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from . import accounts
from .accounts import DATABASE, LOGIN_NAMES, DatabaseServer, Login

BOOTSTRAP_SUPERUSER = "postgres"
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> Path | None:
    """The first directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[Path] = []
    if os.environ.get("SDM_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["SDM_TEST_PG_BINDIR"]))
    if pg_config := shutil.which("pg_config"):
        # pg_config may come from libpq-dev alone, so its bindir is only a candidate.
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    with contextlib.suppress(ImportError):
        import pgserver  # the embedded wheel ships its own binaries

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    for c in candidates:
        if all(os.access(c / b, os.X_OK) and (c / b).is_file() for b in _SERVER_BINARIES):
            return c
    return None


class _PortInUse(Exception):
    pass


class PostgresCluster:
    """initdb + pg_ctl in a temp dir; `start()` returns the DatabaseServer description."""

    def __init__(self, bindir: Path, *, max_connections: int = 200):
        self.bindir = bindir
        self.max_connections = max_connections
        self.account = accounts.service_account("postgres")
        self.base = Path(tempfile.mkdtemp(prefix="sdm-pg-", dir=accounts.private_tempdir_base(self.account)))
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self.superuser_password = accounts.new_password()
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in args], cwd=self.base, capture_output=True, text=True,
                              timeout=timeout, **accounts.run_as(self.account))
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def start(self) -> DatabaseServer:
        self._initdb()
        for _attempt in range(3):
            port = accounts.free_port()
            try:
                self._start_server(port)
                break
            except _PortInUse:
                continue
        else:
            raise RuntimeError("PostgreSQL could not bind a free port in 3 attempts:\n" + accounts.log_tail(self.logfile))
        server = DatabaseServer(
            kind="postgresql", host="127.0.0.1", port=port, socket_dir=str(self.base),
            socket_path=str(self.base / f".s.PGSQL.{port}"), database=DATABASE,
            superuser=BOOTSTRAP_SUPERUSER, superuser_password=self.superuser_password,
            logins={key: Login(name, accounts.new_password()) for key, name in LOGIN_NAMES.items()},
            bindir=str(self.bindir),
        )
        self._wait_until_accepting(server)
        _provision(server)
        return server

    def _initdb(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        accounts.chown_tree(self.base, self.account)
        self._run(self.bindir / "initdb", "-D", self.datadir, "-U", BOOTSTRAP_SUPERUSER, "--pwfile", pwfile,
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        pwfile.unlink()
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# sdm test cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\n"
                f"max_connections = {self.max_connections}\n"
                "password_encryption = 'scram-sha-256'\n"
                # Throwaway data: durability buys nothing and costs seconds.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        # Rewritten rather than patched so the whole policy is visible here. First match wins,
        # so the md5 login's lines come before the scram catch-alls. No trust, no peer.
        (self.datadir / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER      ADDRESS        METHOD\n"
            "local   all       sdm_md5                  md5\n"
            "host    all       sdm_md5   127.0.0.1/32   md5\n"
            "host    all       sdm_md5   ::1/128        md5\n"
            "local   all       all                      scram-sha-256\n"
            "host    all       all       127.0.0.1/32   scram-sha-256\n"
            "host    all       all       ::1/128        scram-sha-256\n"
        )

    def _start_server(self, port: int) -> None:
        try:
            self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o", f"-p {port}",
                      "-w", "-t", "60", "-s", "start", timeout=90)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log = accounts.log_tail(self.logfile)
            self.stop(remove=False)  # in case a postmaster is half up
            if "could not bind" in log or "Address already in use" in log:
                raise _PortInUse() from exc
            raise RuntimeError(f"PostgreSQL did not start: {exc}\n--- server log ---\n{log}") from exc
        self.started = True

    def _wait_until_accepting(self, server: DatabaseServer, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(**server.connect_kwargs("bootstrap") | {"dbname": "postgres"},
                                connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                # pg_ctl -w already waited; only "starting up" style errors are worth retrying.
                if "password authentication failed" in str(exc) or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL not accepting logins after {timeout}s: {exc}\n"
                                       f"--- server log ---\n{accounts.log_tail(self.logfile)}") from exc
                time.sleep(0.1)

    def stop(self, remove: bool = True) -> None:
        if (self.datadir / "postmaster.pid").exists():
            try:
                self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", "30", "stop",
                          timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                # Last resort so a broken session never leaves a postmaster behind.
                with contextlib.suppress(Exception):
                    pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
                    os.kill(pid, signal.SIGQUIT)
        self.started = False
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)


def _provision(server: DatabaseServer) -> None:
    """Roles, the sample database and its grants, created as the bootstrap superuser."""
    import psycopg
    from psycopg import sql

    role = {key: sql.Identifier(login.username) for key, login in server.logins.items()}
    pw = {key: sql.Literal(login.password) for key, login in server.logins.items()}
    with psycopg.connect(**server.connect_kwargs("bootstrap") | {"dbname": "postgres"}, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(role["superuser"], pw["superuser"]))
        for key in ("read-only", "restricted"):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role[key], pw[key]))
        # The md5 login's verifier must be stored as md5 for pg_hba's md5 method to be exercised.
        conn.execute("SET password_encryption = 'md5'")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role["md5"], pw["md5"]))
        conn.execute("RESET password_encryption")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.database)))

    with psycopg.connect(**server.connect_kwargs("bootstrap")) as conn:
        conn.execute("""
            CREATE TABLE customers (
                id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                name text NOT NULL,
                email text NOT NULL UNIQUE,
                country char(2) NOT NULL)""")
        conn.execute("""
            CREATE TABLE orders (
                id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                customer_id integer NOT NULL REFERENCES customers (id),
                amount numeric(10, 2) NOT NULL,
                created_at timestamp NOT NULL)""")
        with conn.cursor() as cur:
            with cur.copy("COPY customers (id, name, email, country) FROM STDIN") as copy:
                for row in accounts.sample_customers():
                    copy.write_row(row)
            with cur.copy("COPY orders (id, customer_id, amount, created_at) FROM STDIN") as copy:
                for row in accounts.sample_orders():
                    copy.write_row(row)
        # Explicit ids do not advance identity sequences; later inserts would collide.
        for table in ("customers", "orders"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}")
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}, {}").format(
            role["read-only"], role["md5"]))
        conn.execute(sql.SQL("GRANT SELECT ON orders TO {}").format(role["restricted"]))
        conn.execute("ANALYZE")


@contextlib.contextmanager
def running_cluster(bindir: Path, *, max_connections: int = 200) -> Iterator[DatabaseServer]:
    cluster = PostgresCluster(bindir, max_connections=max_connections)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
