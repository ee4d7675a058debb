"""The private test servers really check passwords (otherwise credential injection proves nothing)."""
from __future__ import annotations

import os
import socket
import struct

import psycopg
import pymysql
import pytest
from psycopg import errors as pg_errors

from tests.support.accounts import CUSTOMER_COUNT, ORDER_COUNT, sample_orders

PG_KEYS = ["superuser", "read-only", "restricted", "md5"]
MY_KEYS = ["superuser", "read-only", "restricted"]
WRONG = "not-the-password"
ORDER_TOTAL = sum(row[2] for row in sample_orders())  # both servers hold the same rows


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch):
    # A PGPASSWORD/~/.pgpass in the caller's environment would make "no password" tests lie.
    for var in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "MYSQL_PWD"):
        monkeypatch.delenv(var, raising=False)


def pg_connect(server, key, **overrides):
    return psycopg.connect(**server.connect_kwargs(key) | {"passfile": os.devnull, "connect_timeout": 10} | overrides)


def pg_auth_request(server, username: str) -> int:
    """Send a bare StartupMessage; return the code of the server's Authentication request."""
    params = b"".join(k + b"\0" + v.encode() + b"\0" for k, v in
                      ((b"user", username), (b"database", server.database))) + b"\0"
    body = struct.pack("!I", 196608) + params  # protocol 3.0
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        kind, _length, code = struct.unpack("!cII", s.recv(9))
    assert kind == b"R", kind
    return code  # 5 = MD5Password, 10 = SASL


@pytest.mark.postgres
class TestPostgresCluster:
    def test_shape(self, pg_cluster):
        assert pg_cluster.port not in (5432,) and pg_cluster.host == "127.0.0.1"
        assert set(pg_cluster.logins) == set(PG_KEYS)
        assert all(login.password not in repr(pg_cluster) for login in pg_cluster.logins.values())
        assert pg_cluster.superuser_password not in repr(pg_cluster)
        assert os.path.exists(pg_cluster.socket_path)

    @pytest.mark.parametrize("key", PG_KEYS)
    def test_login_with_password(self, pg_cluster, key):
        with pg_connect(pg_cluster, key) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == pg_cluster.logins[key].username
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == ORDER_COUNT

    def test_dsn_connects(self, pg_cluster):
        with psycopg.connect(pg_cluster.dsn("read-only")) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == CUSTOMER_COUNT

    @pytest.mark.parametrize("key", PG_KEYS + ["bootstrap"])
    def test_wrong_password_refused(self, pg_cluster, key):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            pg_connect(pg_cluster, key, password=WRONG)

    @pytest.mark.parametrize("key", PG_KEYS + ["bootstrap"])
    def test_no_password_refused_over_tcp(self, pg_cluster, key):
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            pg_connect(pg_cluster, key, password="")

    @pytest.mark.parametrize("key", ["superuser", "md5", "bootstrap"])
    def test_no_password_refused_over_unix_socket(self, pg_cluster, key):
        # No trust or peer lines: even the socket wants a password.
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            pg_connect(pg_cluster, key, password="", host=pg_cluster.socket_dir)

    def test_sample_data(self, pg_cluster):
        with pg_connect(pg_cluster, "read-only") as conn:
            assert conn.execute("SELECT count(*), sum(amount) FROM orders").fetchone() == (ORDER_COUNT, ORDER_TOTAL)

    def test_read_only_cannot_write(self, pg_cluster):
        with pg_connect(pg_cluster, "read-only") as conn, pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute("INSERT INTO customers (name, email, country) VALUES ('x', 'x@example.com', 'DE')")

    def test_superuser_can_write(self, pg_cluster):
        with pg_connect(pg_cluster, "superuser") as conn:
            conn.execute("INSERT INTO customers (name, email, country) VALUES ('x', 'x@example.com', 'DE')")
            conn.rollback()

    def test_restricted_reads_orders_only(self, pg_cluster):
        with pg_connect(pg_cluster, "restricted") as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == ORDER_COUNT
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM customers")

    def test_stored_verifiers(self, pg_cluster):
        with pg_connect(pg_cluster, "bootstrap") as conn:
            stored = dict(conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolcanlogin").fetchall())
        assert stored[pg_cluster.logins["md5"].username].startswith("md5")
        for key in ("superuser", "read-only", "restricted", "bootstrap"):
            assert stored[pg_cluster.login(key).username].startswith("SCRAM-SHA-256$")

    def test_server_asks_md5_for_md5_login_and_scram_otherwise(self, pg_cluster):
        assert pg_auth_request(pg_cluster, pg_cluster.logins["md5"].username) == 5
        assert pg_auth_request(pg_cluster, pg_cluster.logins["read-only"].username) == 10

    def test_md5_login_is_read_only(self, pg_cluster):
        with pg_connect(pg_cluster, "md5") as conn, pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute("DELETE FROM orders")


def my_connect(server, key, **overrides):
    return pymysql.connect(**server.connect_kwargs(key) | {"connect_timeout": 10} | overrides)


def my_error_code(excinfo) -> int:
    return excinfo.value.args[0]


@pytest.mark.mysql
class TestMariaDBServer:
    def test_shape(self, mysql_server):
        assert mysql_server.port != 3306 and mysql_server.host == "127.0.0.1"
        assert set(mysql_server.logins) == set(MY_KEYS)
        assert all(login.password not in repr(mysql_server) for login in mysql_server.logins.values())
        assert os.path.exists(mysql_server.socket_path)

    @pytest.mark.parametrize("key", MY_KEYS)
    def test_login_with_password(self, mysql_server, key):
        with my_connect(mysql_server, key) as conn, conn.cursor() as cur:
            cur.execute("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
            assert cur.fetchone()[0] == mysql_server.logins[key].username
            cur.execute("SELECT count(*) FROM orders")
            assert cur.fetchone()[0] == ORDER_COUNT

    @pytest.mark.parametrize("key", MY_KEYS + ["bootstrap"])
    def test_wrong_password_refused(self, mysql_server, key):
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            my_connect(mysql_server, key, password=WRONG)
        assert my_error_code(excinfo) == 1045  # ER_ACCESS_DENIED_ERROR

    @pytest.mark.parametrize("key", MY_KEYS + ["bootstrap"])
    def test_no_password_refused(self, mysql_server, key):
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            my_connect(mysql_server, key, password="")
        assert my_error_code(excinfo) == 1045

    def test_root_needs_password_on_the_socket_too(self, mysql_server):
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            pymysql.connect(unix_socket=mysql_server.socket_path, user="root", password="", connect_timeout=10)
        assert my_error_code(excinfo) == 1045

    def test_no_account_logs_in_without_password_over_tcp(self, mysql_server):
        with my_connect(mysql_server, "bootstrap") as conn, conn.cursor() as cur:
            cur.execute("SELECT User, Host FROM mysql.user")
            accounts = cur.fetchall()
        assert accounts and not [a for a in accounts if a[0] == ""], "anonymous accounts must be gone"
        for user, _host in accounts:
            with pytest.raises(pymysql.err.OperationalError):
                pymysql.connect(host=mysql_server.host, port=mysql_server.port, user=user, password="",
                                connect_timeout=10)

    def test_logins_use_native_password(self, mysql_server):
        with my_connect(mysql_server, "bootstrap") as conn, conn.cursor() as cur:
            cur.execute("SELECT User, plugin FROM mysql.user WHERE User LIKE 'sdm\\_%' OR User = 'root'")
            plugins = dict(cur.fetchall())
        expected = {login.username for login in mysql_server.logins.values()} | {"root"}
        assert set(plugins) == expected
        assert set(plugins.values()) == {"mysql_native_password"}

    def test_read_only_cannot_write(self, mysql_server):
        with my_connect(mysql_server, "read-only") as conn, conn.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as excinfo:
                cur.execute("INSERT INTO customers (name, email, country) VALUES ('x', 'x@example.com', 'DE')")
        assert my_error_code(excinfo) == 1142  # ER_TABLEACCESS_DENIED_ERROR

    def test_restricted_reads_orders_only(self, mysql_server):
        with my_connect(mysql_server, "restricted") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")
            assert cur.fetchone()[0] == ORDER_COUNT
            with pytest.raises(pymysql.err.OperationalError) as excinfo:
                cur.execute("SELECT * FROM customers")
        assert my_error_code(excinfo) == 1142

    def test_sample_data(self, mysql_server):
        with my_connect(mysql_server, "read-only") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*), sum(amount) FROM orders")
            assert cur.fetchone() == (ORDER_COUNT, ORDER_TOTAL)
