"""What every private test server holds: its logins and its sample data.

Both the PostgreSQL cluster and the MariaDB server are built from this one
description, so a test can run the same query against either and expect the
same rows.
"""
from __future__ import annotations

import datetime as dt
import os
import pwd
import secrets
import socket
import stat
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

DATABASE = "sdm_test"

# login key -> role name. The keys are the vocabulary tests use.
LOGIN_NAMES = {
    "superuser": "sdm_super",
    "read-only": "sdm_readonly",
    "restricted": "sdm_restricted",  # may read `orders`, nothing else
    "md5": "sdm_md5",  # PostgreSQL only: read-only, password stored and checked as md5
}

CUSTOMER_COUNT = 200
ORDER_COUNT = 600
_COUNTRIES = ("DE", "FR", "US", "JP", "BR", "IN", "NG", "AU")


def new_password() -> str:
    # URL- and SQL-literal-safe, long and random, so a leak test can grep for it.
    return "pw_" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Login:
    username: str
    password: str = field(repr=False)  # keep secrets out of pytest's failure output


@dataclass
class DatabaseServer:
    """A running private server, as the fixtures yield it."""

    kind: str  # "postgresql" or "mysql" (also the URL scheme)
    host: str
    port: int
    socket_dir: str
    socket_path: str  # the server's unix socket file inside socket_dir
    database: str
    superuser: str  # the bootstrap account (postgres / root)
    superuser_password: str = field(repr=False)
    logins: dict[str, Login] = field(default_factory=dict)
    bindir: str = ""

    def login(self, key: str) -> Login:
        if key == "bootstrap":
            return Login(self.superuser, self.superuser_password)
        return self.logins[key]

    def dsn(self, login_key: str, *, password: str | None = None) -> str:
        """URL for one login over TCP; `password=` overrides (e.g. a wrong one)."""
        login = self.login(login_key)
        pw = login.password if password is None else password
        auth = quote(login.username, safe="") + (":" + quote(pw, safe="") if pw else "")
        return f"{self.kind}://{auth}@{self.host}:{self.port}/{self.database}"

    def connect_kwargs(self, login_key: str, *, password: str | None = None) -> dict:
        """Keyword arguments accepted by both psycopg.connect and pymysql.connect."""
        login = self.login(login_key)
        kw = {"host": self.host, "port": self.port, "user": login.username,
              "password": login.password if password is None else password}
        kw["dbname" if self.kind == "postgresql" else "database"] = self.database
        return kw


def sample_customers() -> list[tuple]:
    return [(i, f"Customer {i:03d}", f"customer{i:03d}@example.com", _COUNTRIES[i % len(_COUNTRIES)])
            for i in range(1, CUSTOMER_COUNT + 1)]


def sample_orders() -> list[tuple]:
    start = dt.datetime(2024, 1, 1, 8, 0, 0)
    return [(i, (i * 7) % CUSTOMER_COUNT + 1, Decimal(i * 137 % 50000) / 100 + 1,
             start + dt.timedelta(hours=5 * i))
            for i in range(1, ORDER_COUNT + 1)]


# --- small OS helpers shared by both servers -------------------------------------------


def free_port() -> int:
    # Racy by nature; the servers retry with a new port if the bind fails.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_account(preferred: str) -> pwd.struct_passwd | None:
    """The unprivileged account to run a server as, or None to run as ourselves.

    Database servers refuse (PostgreSQL) or dislike (MariaDB) running as root, and CI is root.
    """
    if os.geteuid() != 0:
        return None
    for name in (preferred, "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root but neither {preferred!r} nor 'nobody' exists to run the server")


def private_tempdir_base(account: pwd.struct_passwd | None) -> str | None:
    """A parent for temp dirs that `account` can traverse ($TMPDIR may be under /root)."""
    base = Path(tempfile.gettempdir())
    if account is None:
        return None
    for p in (base, *base.parents):
        if not p.stat().st_mode & stat.S_IXOTH:
            return "/tmp"
    return None


def chown_tree(path: Path, account: pwd.struct_passwd | None) -> None:
    if account is None:
        return
    os.chown(path, account.pw_uid, account.pw_gid)
    for p in path.rglob("*"):
        os.lchown(p, account.pw_uid, account.pw_gid)


def run_as(account: pwd.struct_passwd | None) -> dict:
    """subprocess keyword arguments: drop to `account` (if any) with a clean environment.

    PG*/MYSQL* variables from the caller's shell must not steer the private servers.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
    env["LC_ALL"] = "C.UTF-8"
    if account is None:
        return {"env": env}
    env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "env": env}


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
