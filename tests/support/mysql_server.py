"""A private MariaDB server where every TCP login needs a password.

It never reads /etc/mysql (--no-defaults) and never touches the machine's own server:
its own datadir, socket, pid file and port. Accounts use mysql_native_password.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from . import accounts
from .accounts import DATABASE, LOGIN_NAMES, DatabaseServer, Login

BOOTSTRAP_SUPERUSER = "root"
MYSQL_LOGIN_KEYS = ("superuser", "read-only", "restricted")  # md5 is a PostgreSQL notion


def find_binaries() -> tuple[Path, Path] | None:
    """(server, install-db) or None when no MariaDB/MySQL server binary exists."""

    def first(*names: str) -> Path | None:
        for name in names:
            found = shutil.which(name) or next(
                (f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin", "/usr/local/bin") if os.access(f"{d}/{name}", os.X_OK)),
                None)
            if found:
                return Path(found)
        return None

    server = first("mariadbd", "mysqld")
    if os.environ.get("SDM_TEST_MYSQLD"):  # explicit choice; must exist
        server = Path(os.environ["SDM_TEST_MYSQLD"])
        if not os.access(server, os.X_OK):
            raise RuntimeError(f"SDM_TEST_MYSQLD={server} is not an executable")
    if server is None:
        return None
    install_db = first("mariadb-install-db", "mysql_install_db")
    if install_db is None:
        raise RuntimeError(f"found {server} but no mariadb-install-db to create a private datadir")
    return server, install_db


class MariaDBServer:
    def __init__(self, server_bin: Path, install_db: Path):
        version = subprocess.run([server_bin, "--version"], capture_output=True, text=True, timeout=30).stdout
        if "MariaDB" not in version:
            # Oracle MySQL needs --initialize-insecure and other auth syntax; not written yet.
            raise RuntimeError(f"{server_bin} is not MariaDB ({version.strip()}); the fixture supports MariaDB only")
        self.server_bin, self.install_db = server_bin, install_db
        self.account = accounts.service_account("mysql")
        self.base = Path(tempfile.mkdtemp(prefix="sdm-my-", dir=accounts.private_tempdir_base(self.account)))
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.logfile = self.base / "server.log"
        self.root_password = accounts.new_password()
        self.proc: subprocess.Popen | None = None

    def _user_flag(self) -> list[str]:
        # mariadbd drops privileges itself when told which account to become.
        return [f"--user={self.account.pw_name}"] if self.account else []

    def start(self) -> DatabaseServer:
        self._install_db()
        for _attempt in range(3):
            port = accounts.free_port()
            if self._start_server(port):
                break
        else:
            raise RuntimeError("MariaDB could not bind a free port in 3 attempts:\n" + accounts.log_tail(self.logfile))
        server = DatabaseServer(
            kind="mysql", host="127.0.0.1", port=port, socket_dir=str(self.base), socket_path=str(self.socket),
            database=DATABASE, superuser=BOOTSTRAP_SUPERUSER, superuser_password=self.root_password,
            logins={key: Login(LOGIN_NAMES[key], accounts.new_password()) for key in MYSQL_LOGIN_KEYS},
            bindir=str(self.server_bin.parent),
        )
        _provision(server)
        return server

    def _install_db(self) -> None:
        # Runs on every start before the server listens: no anonymous users, and root only
        # with a password, on the socket (localhost) and over TCP (127.0.0.1, no name resolution).
        root_auth = f"IDENTIFIED VIA mysql_native_password USING PASSWORD('{self.root_password}')"
        (self.base / "init.sql").write_text(
            "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');\n"
            "FLUSH PRIVILEGES;\n"
            f"ALTER USER 'root'@'localhost' {root_auth};\n"
            f"CREATE USER 'root'@'127.0.0.1' {root_auth};\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n"
        )
        accounts.chown_tree(self.base, self.account)
        proc = subprocess.run(
            [self.install_db, "--no-defaults", f"--datadir={self.datadir}", "--auth-root-authentication-method=socket",
             "--skip-test-db", *self._user_flag()],
            cwd=self.base, capture_output=True, text=True, timeout=180, **accounts.run_as(None))
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")

    def _start_server(self, port: int, timeout: float = 60) -> bool:
        """True once root can log in with its password; False if the port was taken."""
        import pymysql

        self.proc = subprocess.Popen(
            [self.server_bin, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={port}", "--bind-address=127.0.0.1", "--skip-networking=0", "--skip-name-resolve",
             f"--pid-file={self.base / 'mysqld.pid'}", f"--log-error={self.logfile}", f"--tmpdir={self.base}",
             f"--init-file={self.base / 'init.sql'}", "--max-connections=200",
             "--log-warnings=1",  # keep the log tail readable: no line per refused login
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
             # Throwaway data: durability buys nothing and costs seconds.
             "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
             *self._user_flag()],
            cwd=self.base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal must not kill it before teardown
            **accounts.run_as(None))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = accounts.log_tail(self.logfile)
                if "Address already in use" in log or "Bind on TCP/IP port" in log:
                    return False
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}\n--- server log ---\n{log}")
            try:
                pymysql.connect(host="127.0.0.1", port=port, user=BOOTSTRAP_SUPERUSER, password=self.root_password,
                                connect_timeout=5).close()
                return True
            except pymysql.err.OperationalError as exc:
                # 2003/2013: nothing listening yet. Anything else is a real answer: give up now.
                if exc.args[0] not in (2003, 2013) or time.monotonic() > deadline:
                    self.stop(remove=False)
                    raise RuntimeError(f"MariaDB not accepting logins after {timeout}s: {exc}\n"
                                       f"--- server log ---\n{accounts.log_tail(self.logfile)}") from exc
                time.sleep(0.1)

    def stop(self, remove: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM is a clean shutdown for mariadbd
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)


def _provision(server: DatabaseServer) -> None:
    """Sample database, tables and password users, created as root over TCP."""
    import pymysql

    kw = server.connect_kwargs("bootstrap") | {"database": None, "autocommit": True}
    with pymysql.connect(**kw) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {server.database} CHARACTER SET utf8mb4")
        cur.execute(f"USE {server.database}")
        cur.execute("""
            CREATE TABLE customers (
                id INT AUTO_INCREMENT PRIMARY KEY,
                name VARCHAR(100) NOT NULL,
                email VARCHAR(255) NOT NULL UNIQUE,
                country CHAR(2) NOT NULL) ENGINE=InnoDB""")
        cur.execute("""
            CREATE TABLE orders (
                id INT AUTO_INCREMENT PRIMARY KEY,
                customer_id INT NOT NULL,
                amount DECIMAL(10, 2) NOT NULL,
                created_at DATETIME NOT NULL,
                FOREIGN KEY (customer_id) REFERENCES customers (id)) ENGINE=InnoDB""")
        cur.executemany("INSERT INTO customers (id, name, email, country) VALUES (%s, %s, %s, %s)",
                        accounts.sample_customers())
        cur.executemany("INSERT INTO orders (id, customer_id, amount, created_at) VALUES (%s, %s, %s, %s)",
                        accounts.sample_orders())
        for key, login in server.logins.items():
            cur.execute("CREATE USER %s@'%%' IDENTIFIED VIA mysql_native_password USING PASSWORD(%s)",
                        (login.username, login.password))
        grants = {"superuser": "ALL PRIVILEGES ON *.* TO %s@'%%' WITH GRANT OPTION",
                  "read-only": f"SELECT ON {server.database}.* TO %s@'%%'",
                  "restricted": f"SELECT ON {server.database}.orders TO %s@'%%'"}
        for key, grant in grants.items():
            cur.execute("GRANT " + grant, (server.logins[key].username,))


@contextlib.contextmanager
def running_server(server_bin: Path, install_db: Path) -> Iterator[DatabaseServer]:
    server = MariaDBServer(server_bin, install_db)
    try:
        yield server.start()
    finally:
        server.stop()
